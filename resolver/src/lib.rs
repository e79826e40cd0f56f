//! Tollgate's local DNS resolver, which will answer the protected namespace's queries and record
//! which process resolved which name to which addresses.
//!
//! NOTE: nothing is implemented yet, so connections are shown by IP address only.

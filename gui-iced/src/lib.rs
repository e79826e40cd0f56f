//! Tollgate's desktop user interface: prompts, a live connection monitor and a rule editor.
//!
//! NOTE: nothing is implemented yet. Answer prompts with the `tollgate` command meanwhile.

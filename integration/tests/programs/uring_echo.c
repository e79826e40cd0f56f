/* Connects, sends and receives through io_uring only, for the coverage test of io_uring
 * senders. Usage: uring_echo IPV4 PORT MESSAGE. Prints the reply; exits 1 on any failure. */
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int run(struct io_uring *ring, struct io_uring_sqe *sqe, const char *what) {
    struct io_uring_cqe *cqe;
    (void)sqe;
    if (io_uring_submit(ring) < 0 || io_uring_wait_cqe(ring, &cqe) < 0) {
        fprintf(stderr, "%s: io_uring submit failed\n", what);
        exit(1);
    }
    int result = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    if (result < 0) {
        fprintf(stderr, "%s: %s\n", what, strerror(-result));
        exit(1);
    }
    return result;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IPV4 PORT MESSAGE\n", argv[0]);
        return 1;
    }
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
    if (inet_pton(AF_INET, argv[1], &address.sin_addr) != 1) {
        fprintf(stderr, "invalid address %s\n", argv[1]);
        return 1;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct io_uring ring;
    if (fd < 0 || io_uring_queue_init(4, &ring, 0) < 0) {
        perror("setup");
        return 1;
    }

    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&address, sizeof address);
    run(&ring, sqe, "connect");

    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_send(sqe, fd, argv[3], strlen(argv[3]), 0);
    run(&ring, sqe, "send");

    char reply[256] = {0};
    sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv(sqe, fd, reply, sizeof reply - 1, 0);
    int received = run(&ring, sqe, "recv");
    printf("%.*s\n", received, reply);
    io_uring_queue_exit(&ring);
    close(fd);
    return 0;
}

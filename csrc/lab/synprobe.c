/*
 * synprobe: new TCP connections at the rate a raw socket can send them, for
 * measuring what a node's rules cost per NEW connection (bench/, lab).
 *
 *   synprobe SRC DST PORT COUNT [WAIT_MS]
 *
 * Run inside a pod's network namespace (root, for the raw socket). Sends
 * COUNT TCP SYNs from SRC to DST:PORT, each from its own source port (a run
 * takes a block of consecutive ports starting at a random place, so every
 * SYN is a new conntrack entry on the node), in batches of up to 64, reading
 * the answers (SYN-ACK or RST: the destination's kernel answers either way)
 * as they come. It waits up to WAIT_MS (default 500) after the last answer
 * for the rest, then prints one JSON line:
 *
 *   {"sent": N, "answered": A, "seconds": S, "send_seconds": T}
 *
 * S: first send to last answer; T: first send to last send (CLOCK_MONOTONIC).
 * Forwarding through veths happens in the sender's context, so S measures
 * the path through the node's rules, not a sender's limit. IPv4 only.
 * Exit status 2: bad arguments; 1: a socket error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define FIRST_PORT 1024u
#define PORTS (65536u - FIRST_PORT)

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint16_t checksum(const uint8_t *data, size_t len, uint32_t sum) {
    for (size_t i = 0; i + 1 < len; i += 2)
        sum += (uint32_t)data[i] << 8 | data[i + 1];
    if (len & 1)
        sum += (uint32_t)data[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xFFFF) + (sum >> 16);
    return (uint16_t)~sum;
}

/* A 20-byte TCP SYN with its checksum over the IPv4 pseudo-header. */
static void build_syn(uint8_t *tcp, uint32_t src, uint32_t dst, uint16_t sport, uint16_t dport, uint32_t seq) {
    memset(tcp, 0, 20);
    tcp[0] = sport >> 8, tcp[1] = sport & 0xFF;
    tcp[2] = dport >> 8, tcp[3] = dport & 0xFF;
    tcp[4] = seq >> 24, tcp[5] = seq >> 16, tcp[6] = seq >> 8, tcp[7] = seq;
    tcp[12] = 5 << 4;       /* data offset: 5 words */
    tcp[13] = 0x02;         /* SYN */
    tcp[14] = 0xFA, tcp[15] = 0xF0; /* window 64240 */
    uint32_t pseudo = (src >> 16) + (src & 0xFFFF) + (dst >> 16) + (dst & 0xFFFF) + IPPROTO_TCP + 20;
    uint16_t sum = checksum(tcp, 20, pseudo);
    tcp[16] = sum >> 8, tcp[17] = sum & 0xFF;
}

static int usage(const char *why) {
    fprintf(stderr, "synprobe: %s\nusage: synprobe SRC DST PORT COUNT [WAIT_MS]  (IPv4; COUNT 1..%u)\n", why,
            PORTS);
    return 2;
}

static long number(const char *text, long lo, long hi) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    return errno || *end || end == text || v < lo || v > hi ? -1 : v;
}

int main(int argc, char **argv) {
    if (argc != 5 && argc != 6)
        return usage("wrong number of arguments");
    struct in_addr src_a, dst_a;
    if (inet_pton(AF_INET, argv[1], &src_a) != 1 || inet_pton(AF_INET, argv[2], &dst_a) != 1)
        return usage("SRC and DST must be IPv4 addresses");
    long port = number(argv[3], 1, 65535), count = number(argv[4], 1, PORTS);
    long wait_ms = argc == 6 ? number(argv[5], 0, 600000) : 500;
    if (port < 0 || count < 0 || wait_ms < 0)
        return usage("PORT, COUNT or WAIT_MS out of range");
    uint32_t src = ntohl(src_a.s_addr), dst = ntohl(dst_a.s_addr);

    int fd = socket(AF_INET, SOCK_RAW | SOCK_NONBLOCK, IPPROTO_TCP);
    if (fd < 0) {
        perror("synprobe: raw socket");
        return 1;
    }
    struct sockaddr_in me = {.sin_family = AF_INET, .sin_addr = src_a};
    if (bind(fd, (struct sockaddr *)&me, sizeof me) < 0) {
        perror("synprobe: bind");
        return 1;
    }
    int rcvbuf = 64 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf); /* best effort: answers are read as they come */

    uint32_t random_start;
    if (getrandom(&random_start, sizeof random_start, 0) != sizeof random_start)
        random_start = (uint32_t)getpid() * 2654435761u;
    const uint32_t start = random_start % PORTS;
    static uint8_t answered_port[65536];
    static uint8_t packets[BATCH][20];
    static uint8_t rx[BATCH][1600];
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_addr = dst_a};
    struct mmsghdr out[BATCH], in[BATCH];
    struct iovec out_iov[BATCH], in_iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        out_iov[i] = (struct iovec){packets[i], 20};
        out[i].msg_hdr = (struct msghdr){.msg_name = &to, .msg_namelen = sizeof to, .msg_iov = &out_iov[i],
                                         .msg_iovlen = 1};
        in_iov[i] = (struct iovec){rx[i], sizeof rx[i]};
        in[i].msg_hdr = (struct msghdr){.msg_iov = &in_iov[i], .msg_iovlen = 1};
    }

    long sent = 0, answered = 0;
    double t0 = now(), t_sent = t0, t_last = t0;
    for (;;) {
        /* read whatever has come back */
        for (;;) {
            int got = recvmmsg(fd, in, BATCH, MSG_DONTWAIT, NULL);
            if (got <= 0)
                break;
            double t = now();
            for (int i = 0; i < got; i++) {
                const uint8_t *p = rx[i];
                size_t len = in[i].msg_len;
                if (len < 20 || (p[0] >> 4) != 4)
                    continue;
                size_t ihl = (size_t)(p[0] & 0xF) * 4;
                if (len < ihl + 14)
                    continue;
                uint32_t from = (uint32_t)p[12] << 24 | (uint32_t)p[13] << 16 | (uint32_t)p[14] << 8 | p[15];
                const uint8_t *tcp = p + ihl;
                unsigned sport = (unsigned)tcp[0] << 8 | tcp[1], dport = (unsigned)tcp[2] << 8 | tcp[3];
                bool reply = (tcp[13] & 0x04) || (tcp[13] & 0x12) == 0x12; /* RST, or SYN+ACK */
                if (from != dst || sport != (unsigned)port || dport < FIRST_PORT || !reply || answered_port[dport])
                    continue;
                unsigned offset = (dport - FIRST_PORT + PORTS - start) % PORTS;
                if (offset >= (unsigned long)sent)
                    continue; /* not one of ours (an earlier run's straggler) */
                answered_port[dport] = 1;
                answered++;
                t_last = t;
            }
        }
        if (sent < count) {
            int n = count - sent < BATCH ? (int)(count - sent) : BATCH;
            for (int i = 0; i < n; i++) {
                uint16_t sport = (uint16_t)(FIRST_PORT + (start + (uint32_t)(sent + i)) % PORTS);
                build_syn(packets[i], src, dst, sport, (uint16_t)port, (uint32_t)(sent + i) * 7919u + 1);
            }
            int done = sendmmsg(fd, out, (unsigned)n, 0);
            if (done < 0) {
                if (errno == EAGAIN || errno == ENOBUFS) {
                    poll(&(struct pollfd){fd, POLLOUT, 0}, 1, 1);
                    continue;
                }
                perror("synprobe: sendmmsg");
                return 1;
            }
            sent += done;
            t_sent = now();
            continue;
        }
        if (answered >= count)
            break;
        /* all sent: wait for the rest, up to WAIT_MS after the last answer (or the last send) */
        double since = now() - (t_last > t_sent ? t_last : t_sent);
        int left = (int)(wait_ms - since * 1000);
        if (left <= 0)
            break;
        poll(&(struct pollfd){fd, POLLIN, 0}, 1, left);
    }
    double end = answered ? t_last : t_sent;
    printf("{\"sent\": %ld, \"answered\": %ld, \"seconds\": %.9f, \"send_seconds\": %.9f}\n", sent, answered, end - t0,
           t_sent - t0);
    close(fd);
    return 0;
}

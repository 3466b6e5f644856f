/*
 * Driver for the fuzz target where libFuzzer is not available (gcc builds):
 *   fuzz_parse [-runs=N] [-max_total_time=SECONDS] [-seed=S] CORPUS_DIR...
 * Replays every corpus file, then (unless -runs=0) feeds random mutations of
 * corpus inputs (byte flips, inserts, deletes, splices, dictionary tokens)
 * until the run count or the time limit is reached. Pair it with the
 * sanitizer build: a finding aborts, and the input is written to crash-input.
 */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_MAX_INPUT 256
#define MAX_CORPUS 4096

static uint8_t *corpus[MAX_CORPUS];
static size_t corpus_len[MAX_CORPUS];
static size_t corpus_n;

static const char *TOKENS[] = {"192.0.2.1", "2001:db8::1", "::", "/", ",", ":", "tcp", "udp", "sctp", "icmp",
                               "icmpv6", "nomatch", " ", "-", "65535", "255", "0", "/0", "/32", "/128",
                               "ffff:", "::ffff:1.2.3.4", "echo-request", "99999999999"};

static uint64_t rng_state;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void load_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        fprintf(stderr, "fuzz_parse: cannot open corpus directory %s\n", path);
        exit(2);
    }
    struct dirent *ent;
    while ((ent = readdir(d)) && corpus_n < MAX_CORPUS) {
        if (ent->d_name[0] == '.')
            continue;
        char file[4096];
        snprintf(file, sizeof file, "%s/%s", path, ent->d_name);
        FILE *f = fopen(file, "rb");
        if (!f)
            continue;
        uint8_t *buf = malloc(FUZZ_MAX_INPUT);
        size_t n = fread(buf, 1, FUZZ_MAX_INPUT, f);
        fclose(f);
        corpus[corpus_n] = buf;
        corpus_len[corpus_n++] = n;
    }
    closedir(d);
}

/* The input being run, written out only if the run dies. */
static uint8_t current[FUZZ_MAX_INPUT];
static size_t current_len;

static void dump_current(void) {
    FILE *f = fopen("crash-input", "wb");
    if (f) {
        fwrite(current, 1, current_len, f);
        fclose(f);
        fprintf(stderr, "fuzz_parse: input written to crash-input\n");
    }
}

static void on_abort(int sig) {
    dump_current();
    signal(sig, SIG_DFL);
    raise(sig);
}

void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void run_one(const uint8_t *data, size_t n) {
    memcpy(current, data, n);
    current_len = n;
    LLVMFuzzerTestOneInput(data, n);
}

static size_t mutate(uint8_t *buf, size_t n) {
    int ops = 1 + (int)(rnd() % 4);
    for (int k = 0; k < ops; k++) {
        switch (rnd() % 6) {
        case 0: /* flip a byte */
            if (n > 1)
                buf[1 + rnd() % (n - 1)] = (uint8_t)rnd();
            break;
        case 1: /* insert a printable byte */
            if (n < FUZZ_MAX_INPUT) {
                size_t at = 1 + rnd() % n;
                memmove(buf + at + 1, buf + at, n - at);
                buf[at] = (uint8_t)(32 + rnd() % 95);
                n++;
            }
            break;
        case 2: /* delete a byte */
            if (n > 1) {
                size_t at = 1 + rnd() % (n - 1);
                memmove(buf + at, buf + at + 1, n - at - 1);
                n--;
            }
            break;
        case 3: { /* insert a token */
            const char *tok = TOKENS[rnd() % (sizeof TOKENS / sizeof TOKENS[0])];
            size_t tl = strlen(tok);
            if (n + tl <= FUZZ_MAX_INPUT) {
                size_t at = 1 + rnd() % n;
                memmove(buf + at + tl, buf + at, n - at);
                memcpy(buf + at, tok, tl);
                n += tl;
            }
            break;
        }
        case 4: /* new type/family byte */
            buf[0] = (uint8_t)rnd();
            break;
        case 5: { /* splice the tail of another input */
            size_t o = rnd() % corpus_n;
            if (corpus_len[o] > 1) {
                size_t from = 1 + rnd() % (corpus_len[o] - 1);
                size_t at = 1 + rnd() % n;
                size_t take = corpus_len[o] - from;
                if (at + take > FUZZ_MAX_INPUT)
                    take = FUZZ_MAX_INPUT - at;
                memcpy(buf + at, corpus[o] + from, take);
                n = at + take;
            }
            break;
        }
        }
    }
    return n;
}

int main(int argc, char **argv) {
    long runs = -1;
    double max_time = 10;
    rng_state = 0x9E3779B97F4A7C15ull;
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "-runs=", 6) == 0)
            runs = atol(argv[i] + 6);
        else if (strncmp(argv[i], "-max_total_time=", 16) == 0)
            max_time = atof(argv[i] + 16);
        else if (strncmp(argv[i], "-seed=", 6) == 0)
            rng_state = strtoull(argv[i] + 6, NULL, 10) | 1;
        else if (argv[i][0] != '-')
            load_dir(argv[i]);
    }
    signal(SIGABRT, on_abort);
    signal(SIGSEGV, on_abort);
    if (__sanitizer_set_death_callback)
        __sanitizer_set_death_callback(dump_current);
    if (corpus_n == 0) {
        fprintf(stderr, "fuzz_parse: empty corpus\n");
        return 2;
    }
    for (size_t i = 0; i < corpus_n; i++)
        run_one(corpus[i], corpus_len[i]);
    long done = 0;
    struct timespec t0, t;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    uint8_t buf[FUZZ_MAX_INPUT];
    while (runs < 0 || done < runs) {
        size_t o = rnd() % corpus_n;
        size_t n = corpus_len[o] ? corpus_len[o] : 1;
        memcpy(buf, corpus[o], corpus_len[o]);
        if (!corpus_len[o])
            buf[0] = 0;
        n = mutate(buf, n);
        run_one(buf, n);
        done++;
        if ((done & 1023) == 0) {
            clock_gettime(CLOCK_MONOTONIC, &t);
            if ((double)(t.tv_sec - t0.tv_sec) + (double)(t.tv_nsec - t0.tv_nsec) * 1e-9 > max_time)
                break;
        }
    }
    printf("fuzz_parse: %zu corpus inputs, %ld mutations, no findings\n", corpus_n, done);
    for (size_t i = 0; i < corpus_n; i++)
        free(corpus[i]);
    return 0;
}

/* C unit tests for the native core. Run by ctest, also under ASan/UBSan. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pyipset/evaluator.h"
#include "pyipset/ipset_core.h"
#include "../src/table.h" /* to build colliding keys for a known seed */

static int failures = 0;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                      \
        }                                                                    \
    } while (0)

static ips_entry parse_ok(ips_type t, ips_family f, const char *s) {
    ips_entry e;
    char why[IPS_REASON_MAX];
    ips_status st = ips_parse_entry(t, f, s, strlen(s), &e, why, sizeof why);
    if (st != IPS_OK) {
        fprintf(stderr, "unexpected parse failure of '%s': %s\n", s, why);
        failures++;
    }
    return e;
}

static void expect_parse_error(ips_type t, ips_family f, const char *s, const char *reason_part) {
    ips_entry e;
    char why[IPS_REASON_MAX] = "";
    ips_status st = ips_parse_entry(t, f, s, strlen(s), &e, why, sizeof why);
    if (st == IPS_OK || !strstr(why, reason_part)) {
        fprintf(stderr, "'%s': expected an error containing '%s', got status %d '%s'\n", s, reason_part, st, why);
        failures++;
    }
}

static void expect_roundtrip(ips_type t, ips_family f, const char *in, const char *want) {
    ips_entry e = parse_ok(t, f, in);
    char buf[IPS_ENTRY_TEXT_MAX];
    ips_format_entry(t, f, &e, buf, sizeof buf);
    if (strcmp(buf, want) != 0) {
        fprintf(stderr, "format of '%s': got '%s', want '%s'\n", in, buf, want);
        failures++;
    }
}

static bool add_text(ips_set *s, const char *text) {
    ips_entry e = parse_ok(ips_set_type(s), ips_set_family(s), text);
    bool added = false;
    CHECK(ips_set_add(s, &e, &added) == IPS_OK);
    return added;
}

static bool test_text(ips_set *s, const char *text) {
    ips_entry e = parse_ok(ips_set_type(s), ips_set_family(s), text);
    return ips_set_test(s, &e);
}

static void test_parse_format(void) {
    expect_roundtrip(IPS_HASH_IP, IPS_INET, " 192.0.2.1 ", "192.0.2.1");
    expect_roundtrip(IPS_HASH_IP, IPS_INET, "0.0.0.0", "0.0.0.0");
    expect_roundtrip(IPS_HASH_IP, IPS_INET, "255.255.255.255/32", "255.255.255.255");
    expect_roundtrip(IPS_HASH_IP, IPS_INET6, "2001:db8:0:0::1", "2001:db8::1");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,80", "192.0.2.1,tcp:80");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,udp:0", "192.0.2.1,udp:0");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,sctp:65535", "192.0.2.1,sctp:65535");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,icmp:8/0", "192.0.2.1,icmp:echo-request");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,icmp:7/3", "192.0.2.1,icmp:7/3");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,47:0", "192.0.2.1,gre:0");
    expect_roundtrip(IPS_HASH_IP_PORT, IPS_INET6, "2001:db8::1,icmpv6:echo-request",
                     "2001:db8::1,ipv6-icmp:echo-request");
    expect_roundtrip(IPS_HASH_IP_PORT_IP, IPS_INET, "192.0.2.1,udp:53,198.51.100.2",
                     "192.0.2.1,udp:53,198.51.100.2");
    expect_roundtrip(IPS_HASH_NET, IPS_INET, "192.0.2.77/24", "192.0.2.0/24");
    expect_roundtrip(IPS_HASH_NET, IPS_INET, "192.0.2.7/32", "192.0.2.7");
    expect_roundtrip(IPS_HASH_NET, IPS_INET, "10.1.2.3/0", "0.0.0.0/0");
    expect_roundtrip(IPS_HASH_NET, IPS_INET, "192.0.2.128/25  nomatch", "192.0.2.128/25 nomatch");
    expect_roundtrip(IPS_HASH_NET, IPS_INET6, "2001:db8:ffff::1/33", "2001:db8:8000::/33");
    expect_roundtrip(IPS_HASH_NET, IPS_INET6, "::/0", "::/0");

    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.2.256", "not an IPv4 address");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.02.1", "not an IPv4 address");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.2", "not an IPv4 address");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "", "empty");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "2001:db8::1", "IPv6 address but the set is family inet");
    expect_parse_error(IPS_HASH_IP, IPS_INET6, "192.0.2.1", "IPv4 address but the set is family inet6");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.2.0/24", "is a network");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.2.1-192.0.2.9", "range");
    expect_parse_error(IPS_HASH_IP, IPS_INET, "192.0.2.1 nomatch", "only valid in hash:net");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,tcp:65536", "not a number 0-65535");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,tcp:80-90", "range");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,tcp:http", "service names");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,0:0", "protocol 0");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,gre:5", "has no ports");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,bogus:5", "unknown protocol");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET6, "2001:db8::1,icmp:8/0", "use icmpv6");
    expect_parse_error(IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1", "expected IP,proto:port");
    expect_parse_error(IPS_HASH_IP_PORT_IP, IPS_INET, "192.0.2.1,tcp:1,192.0.2.0/24", "single address");
    expect_parse_error(IPS_HASH_NET, IPS_INET, "192.0.2.0/33", "prefix length");
    expect_parse_error(IPS_HASH_NET, IPS_INET, "192.0.2.0/24 nomatchx", "only 'nomatch' may follow");
}

static void test_zero_and_extremes(void) {
    ips_status st;
    ips_set *s = ips_set_new(IPS_HASH_IP, IPS_INET, 42, &st);
    CHECK(s && st == IPS_OK);
    CHECK(!test_text(s, "0.0.0.0"));
    CHECK(add_text(s, "0.0.0.0"));
    CHECK(!add_text(s, "0.0.0.0"));
    CHECK(add_text(s, "255.255.255.255"));
    CHECK(test_text(s, "0.0.0.0") && test_text(s, "255.255.255.255"));
    CHECK(ips_set_size(s) == 2);
    size_t cursor = 0, seen = 0;
    ips_entry e;
    while (ips_set_next(s, &cursor, &e))
        seen++;
    CHECK(seen == 2);
    ips_entry z = parse_ok(IPS_HASH_IP, IPS_INET, "0.0.0.0");
    bool removed = false;
    CHECK(ips_set_del(s, &z, &removed) == IPS_OK && removed);
    CHECK(ips_set_del(s, &z, &removed) == IPS_OK && !removed);
    CHECK(!test_text(s, "0.0.0.0") && ips_set_size(s) == 1);
    /* Batch over the zero key with an empty and a non-empty table. */
    uint32_t q[2] = {0, 0xFFFFFFFFu};
    uint8_t out[2];
    ips_set_test_many(s, 2, q, NULL, NULL, NULL, out);
    CHECK(out[0] == 0 && out[1] == 1);
    ips_set_free(s);

    s = ips_set_new(IPS_HASH_IP_PORT, IPS_INET, 42, &st);
    CHECK(add_text(s, "0.0.0.0,tcp:0"));
    CHECK(test_text(s, "0.0.0.0,tcp:0") && !test_text(s, "0.0.0.0,udp:0"));
    /* A batch query with protocol 0 makes an all-zero key: never a member. */
    uint32_t ip0 = 0;
    uint8_t p0 = 0;
    uint16_t port0 = 0;
    ips_set_test_many(s, 1, &ip0, &p0, &port0, NULL, out);
    CHECK(out[0] == 0);
    ips_set_free(s);

    /* Every type and family: a batch of all-zero columns against a set
     * holding other members is a miss (an empty slot is all zeros too). */
    static const struct {
        ips_type type;
        ips_family family;
        const char *member;
    } sets[] = {
        {IPS_HASH_IP, IPS_INET, "192.0.2.1"},
        {IPS_HASH_IP_PORT, IPS_INET, "192.0.2.1,tcp:80"},
        {IPS_HASH_IP_PORT_IP, IPS_INET, "192.0.2.1,tcp:80,198.51.100.1"},
        {IPS_HASH_NET, IPS_INET, "192.0.2.0/24"},
        {IPS_HASH_IP, IPS_INET6, "2001:db8::1"},
        {IPS_HASH_IP_PORT, IPS_INET6, "2001:db8::1,udp:53"},
        {IPS_HASH_IP_PORT_IP, IPS_INET6, "2001:db8::1,sctp:9,2001:db8::2"},
        {IPS_HASH_NET, IPS_INET6, "2001:db8::/32"},
    };
    uint8_t zeros[16] = {0};
    for (size_t i = 0; i < sizeof sets / sizeof *sets; i++) {
        s = ips_set_new(sets[i].type, sets[i].family, 42, &st);
        CHECK(add_text(s, sets[i].member));
        out[0] = 0x55;
        ips_set_test_many(s, 1, zeros, zeros, (const uint16_t *)zeros, zeros, out);
        CHECK(out[0] == 0);
        ips_set_free(s);
    }
}

static void test_net_nomatch(void) {
    ips_status st;
    ips_set *s = ips_set_new(IPS_HASH_NET, IPS_INET, 7, &st);
    add_text(s, "10.0.0.0/8");
    add_text(s, "10.1.0.0/16 nomatch");
    add_text(s, "10.1.2.0/24");
    add_text(s, "10.1.2.128/25 nomatch");
    add_text(s, "10.1.2.200");
    for (int pass = 0; pass < 2; pass++) {
        /* pass 0: per-length probes; pass 1: the flat index */
        if (pass == 1)
            CHECK(ips_set_prepare(s) == IPS_OK);
        CHECK(test_text(s, "10.9.9.9"));
        CHECK(!test_text(s, "10.1.9.9"));
        CHECK(test_text(s, "10.1.2.1"));
        CHECK(!test_text(s, "10.1.2.129"));
        CHECK(test_text(s, "10.1.2.200"));
        CHECK(!test_text(s, "11.0.0.0"));
        CHECK(!test_text(s, "9.255.255.255"));
        CHECK(test_text(s, "10.255.255.255"));
        /* exact tests of networks */
        CHECK(test_text(s, "10.0.0.0/8"));
        CHECK(!test_text(s, "10.1.0.0/16"));
        CHECK(test_text(s, "10.1.0.0/16 nomatch"));
        CHECK(!test_text(s, "10.0.0.0/9"));
    }
    /* Flipping the flag with a second add, as ipset add -exist does. */
    CHECK(!add_text(s, "10.1.0.0/16"));
    CHECK(test_text(s, "10.1.9.9"));
    CHECK(ips_set_size(s) == 5);
    ips_set_clear(s);
    CHECK(ips_set_size(s) == 0 && !test_text(s, "10.0.0.1"));
    add_text(s, "0.0.0.0/0");
    add_text(s, "255.255.255.255 nomatch");
    CHECK(ips_set_prepare(s) == IPS_OK);
    CHECK(test_text(s, "0.0.0.0") && test_text(s, "255.255.255.254") && !test_text(s, "255.255.255.255"));
    ips_set_free(s);

    s = ips_set_new(IPS_HASH_NET, IPS_INET6, 7, &st);
    add_text(s, "::/0");
    add_text(s, "2001:db8::/32 nomatch");
    add_text(s, "2001:db8::1/128");
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1)
            CHECK(ips_set_prepare(s) == IPS_OK);
        CHECK(test_text(s, "::"));
        CHECK(test_text(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        CHECK(!test_text(s, "2001:db8::2"));
        CHECK(test_text(s, "2001:db8::1"));
    }
    ips_set_free(s);
}

/* Churn against a plain bitmap of 2^16 possible keys: growth, shrink,
 * backward-shift deletion, reinsertion. */
/* A set through its public API, churned in cycles that grow it to thousands
 * of members and delete it back to a few dozen, three times: it must grow and
 * shrink (its memory goes up and down; counted, so that a test that never
 * shrinks fails), and answer every key as the model does at every turn. */
static ips_entry churn_entry(uint32_t v) {
    ips_entry e = {0};
    e.ip[2] = (uint8_t)(v >> 8);
    e.ip[3] = (uint8_t)v;
    e.proto = 6;
    e.port = (uint16_t)(v & 7);
    e.cidr = 32;
    return e;
}

static void test_churn(void) {
    ips_status st;
    ips_set *s = ips_set_new(IPS_HASH_IP_PORT, IPS_INET, 99, &st);
    static uint8_t model[1 << 16];
    memset(model, 0, sizeof model);
    uint64_t x = 12345;
    size_t count = 0, memory = ips_set_memory(s);
    int grew = 0, shrank = 0;
    for (int cycle = 0; cycle < 3; cycle++) {
        for (int phase = 0; phase < 2; phase++) {
            const bool growing = phase == 0;
            while (growing ? count < 20000 : count > 60) {
                x = x * 6364136223846793005ull + 1442695040888963407ull;
                uint32_t v = (uint32_t)(x >> 33) & 0xFFFF;
                const bool adding = ((x >> 20) % 100) < (growing ? 90u : 10u);
                while (!adding && !model[v] && count)
                    v = (v + 1) & 0xFFFF; /* deletions take a member: the set empties as the phase wants */
                ips_entry e = churn_entry(v);
                bool did;
                if (adding) {
                    CHECK(ips_set_add(s, &e, &did) == IPS_OK);
                    CHECK(did == !model[v]);
                    count += !model[v];
                    model[v] = 1;
                } else {
                    CHECK(ips_set_del(s, &e, &did) == IPS_OK);
                    CHECK(did == model[v]);
                    count -= model[v];
                    model[v] = 0;
                }
                size_t now = ips_set_memory(s);
                grew += now > memory;
                shrank += now < memory;
                memory = now;
            }
            CHECK(ips_set_size(s) == count);
            for (uint32_t k = 0; k < (1 << 16); k++) {
                ips_entry q = churn_entry(k);
                if (ips_set_test(s, &q) != (model[k] != 0)) {
                    failures++;
                    fprintf(stderr, "churn mismatch in cycle %d phase %d key %u\n", cycle, phase, k);
                    break;
                }
            }
        }
    }
    CHECK(grew >= 3 && shrank >= 3); /* it did grow and shrink, in every cycle */
    ips_set_free(s);
}

/* Passing counts recomputed from the stored keys equal the kept ones. */
static bool counts_exact(const ips_table *t) {
    if (!IPS_COUNTED(t->W) || t->cap == 0)
        return true;
    const unsigned W = t->W;
    const size_t per = IPS_PER_LINE(W), lines = tbl_phys(t) / per;
    uint32_t *want = calloc(lines, sizeof *want);
    for (size_t i = 0; i < tbl_phys(t); i++) {
        const uint32_t *slot = tbl_slot(t, i);
        if (key_is_zero(slot, W))
            continue;
        uint32_t k[IPS_MAX_WORDS];
        memcpy(k, slot, W * sizeof *k);
        k[W - 1] &= t->last_mask;
        for (size_t line = hash_home(t, tbl_hash(t, k, W)) / per; line < i / per; line++)
            want[line]++;
    }
    bool ok = true;
    for (size_t line = 0; line < lines; line++)
        ok &= want[line] == t->slots[line * IPS_LINE_WORDS + IPS_LINE_WORDS - 1];
    free(want);
    return ok;
}

/*
 * Random inserts and removals on the bare table for every key width (plain,
 * bucketed with and without passing counts, tagged), against a model:
 * membership, size and the passing counts stay exact through growth,
 * shrinking and backward shifts.
 */
/* Every key width, churned in cycles that grow the table to thousands of keys
 * and delete it back to a few dozen, three times: membership equals the model
 * and the passing counts are exact after every growth and every shrink (each
 * counted: a width that never shrinks fails), and at the end of each phase. */
static void test_table_churn(void) {
    static const unsigned widths[] = {1, 2, 3, 4, 5, 9};
    enum { IDS = 1 << 13 };
    static uint8_t model[IDS];
    for (unsigned wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
        const unsigned W = widths[wi];
        ips_table t;
        tbl_init(&t, W, 0xFFFFFFFFu, 1000 + W);
        memset(model, 0, sizeof model);
        size_t count = 0, cap = t.cap;
        int grew = 0, shrank = 0;
        uint64_t x = 4242 + W;
        uint32_t k[IPS_MAX_WORDS];
        for (int cycle = 0; cycle < 3; cycle++) {
            for (int phase = 0; phase < 2; phase++) {
                const bool growing = phase == 0;
                while (growing ? count < 6000 : count > 40) {
                    x = x * 6364136223846793005ull + 1442695040888963407ull;
                    uint32_t id = (uint32_t)(x >> 40) % IDS;
                    const bool adding = ((x >> 20) % 100) < (growing ? 90u : 10u);
                    while (!adding && !model[id] && count)
                        id = (id + 1) % IDS; /* deletions take a member */
                    for (unsigned w = 0; w < W; w++)
                        k[w] = (id + 1) * (2654435761u + 2 * w);
                    bool did = false;
                    if (adding) {
                        CHECK(tbl_upsert(&t, k, &did) == IPS_OK && did == !model[id]);
                        count += !model[id];
                        model[id] = 1;
                    } else {
                        CHECK(tbl_remove(&t, k, &did) == IPS_OK && did == model[id]);
                        count -= model[id];
                        model[id] = 0;
                    }
                    if (t.cap != cap) {
                        grew += t.cap > cap;
                        shrank += t.cap < cap;
                        cap = t.cap;
                        CHECK(counts_exact(&t));
                    }
                }
                CHECK(tbl_size(&t) == count && counts_exact(&t));
                for (uint32_t q = 0; q < IDS; q++) {
                    for (unsigned w = 0; w < W; w++)
                        k[w] = (q + 1) * (2654435761u + 2 * w);
                    if (tbl_contains(&t, k, W) != (model[q] != 0)) {
                        fprintf(stderr, "table churn (W=%u): mismatch in cycle %d phase %d key %u\n", W, cycle,
                                phase, q);
                        failures++;
                        break;
                    }
                }
            }
        }
        if (!(grew >= 3 && shrank >= 3)) {
            fprintf(stderr, "table churn (W=%u): grew %d and shrank %d times\n", W, grew, shrank);
            failures++;
        }
        tbl_release(&t);
    }
}

/* Many entries, then batch tests that must equal the single tests. */
static void test_batch_matches_single(void) {
    ips_status st;
    for (int fam = 0; fam < 2; fam++) {
        ips_family f = fam ? IPS_INET6 : IPS_INET;
        ips_set *s = ips_set_new(IPS_HASH_IP_PORT_IP, f, 5, &st);
        enum { N = 20000 };
        static uint32_t ip4[N], ip4b[N];
        static uint8_t ip6[N * 16], ip6b[N * 16], proto[N], out[N];
        static uint16_t port[N];
        uint64_t x = 777;
        for (int i = 0; i < N; i++) {
            x = x * 6364136223846793005ull + 1442695040888963407ull;
            ip4[i] = (uint32_t)(x >> 32);
            ip4b[i] = (uint32_t)x;
            for (int b = 0; b < 16; b++) {
                ip6[i * 16 + b] = (uint8_t)(x >> (b * 4));
                ip6b[i * 16 + b] = (uint8_t)(x >> (b * 3 + 1));
            }
            proto[i] = (i % 3 == 0) ? 6 : (i % 3 == 1) ? 17 : 132;
            port[i] = (uint16_t)(x >> 40);
        }
        const void *a = fam ? (const void *)ip6 : (const void *)ip4;
        const void *b = fam ? (const void *)ip6b : (const void *)ip4b;
        size_t added = 0, bad = 0;
        CHECK(ips_set_add_many(s, N / 2, a, proto, port, b, NULL, false, &added, &bad) == IPS_OK);
        CHECK(added == N / 2 && ips_set_size(s) == N / 2);
        ips_set_test_many(s, N, a, proto, port, b, out);
        for (int i = 0; i < N; i++)
            CHECK(out[i] == (i < N / 2));
        /* a bad row rejects the whole batch */
        uint8_t saved = proto[N - 1];
        proto[N - 1] = 0;
        CHECK(ips_set_add_many(s, N, a, proto, port, b, NULL, false, &added, &bad) == IPS_ERR_INVALID);
        CHECK(bad == N - 1 && ips_set_size(s) == N / 2);
        proto[N - 1] = saved;
        size_t removed = 0;
        CHECK(ips_set_del_many(s, N / 4, a, proto, port, b, NULL, &removed, &bad) == IPS_OK);
        CHECK(removed == N / 4 && ips_set_size(s) == N / 2 - N / 4);
        ips_set_test_many(s, N, a, proto, port, b, out);
        for (int i = 0; i < N; i++)
            CHECK(out[i] == (i >= N / 4 && i < N / 2));
        ips_set_free(s);
    }
}

/* Random prefixes: the flat index must agree with the per-length probes. */
static void test_net_index_random(void) {
    ips_status st;
    ips_set *s = ips_set_new(IPS_HASH_NET, IPS_INET, 11, &st);
    uint64_t x = 4242;
    enum { M = 3000, Q = 200000 };
    for (int i = 0; i < M; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        ips_entry e = {0};
        uint32_t a = (uint32_t)(x >> 32) & 0x0FFFFFFFu; /* crowd them so they nest */
        e.ip[0] = (uint8_t)(a >> 24);
        e.ip[1] = (uint8_t)(a >> 16);
        e.ip[2] = (uint8_t)(a >> 8);
        e.ip[3] = (uint8_t)a;
        e.cidr = (uint8_t)(4 + (x >> 8) % 29);
        e.nomatch = ((x >> 16) & 3) == 0;
        /* clear host bits the way the parser does */
        uint32_t m = e.cidr ? ~0u << (32 - e.cidr) : 0;
        a &= m;
        e.ip[0] = (uint8_t)(a >> 24);
        e.ip[1] = (uint8_t)(a >> 16);
        e.ip[2] = (uint8_t)(a >> 8);
        e.ip[3] = (uint8_t)a;
        CHECK(ips_set_add(s, &e, NULL) == IPS_OK);
    }
    static uint32_t q[Q];
    static uint8_t slow[Q], fast[Q];
    for (int i = 0; i < Q; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        q[i] = (uint32_t)(x >> 32) & 0x1FFFFFFFu;
    }
    ips_set_test_many(s, Q, q, NULL, NULL, NULL, slow);
    CHECK(ips_set_prepare(s) == IPS_OK);
    ips_set_test_many(s, Q, q, NULL, NULL, NULL, fast);
    size_t hits = 0;
    for (int i = 0; i < Q; i++) {
        CHECK(slow[i] == fast[i]);
        hits += fast[i];
    }
    CHECK(hits > 0 && hits < Q);
    ips_set_free(s);
}

/*
 * Hash flooding: keys chosen to share one home slot under a set's seed (here
 * the seed is known, which an outside sender's is not). The set must reseed
 * instead of letting the run grow, and stay correct.
 */
static void test_flooding_reseeds(void) {
    const uint64_t seed = 0xC0FFEE;
    ips_table probe;
    tbl_init(&probe, 1, 0xFFFFFFFFu, seed);
    probe.cap = probe.homes = 2408; /* the capacity 1000 keys will have: 1000 * 12/5, rounded up to a multiple of 8 */
    probe.home_step = 1;
    enum { N = 1000 };
    static uint32_t keys[N];
    size_t found = 0;
    for (uint32_t k = 1; found < N; k++)
        if (hash_home(&probe, tbl_hash(&probe, &k, 1)) == 5)
            keys[found++] = k;
    ips_status st;
    ips_set *s = ips_set_new(IPS_HASH_IP, IPS_INET, seed, &st);
    CHECK(ips_set_reserve(s, N) == IPS_OK); /* the same capacity, so the same homes */
    size_t added = 0, bad = 0;
    CHECK(ips_set_add_many(s, N, keys, NULL, NULL, NULL, NULL, false, &added, &bad) == IPS_OK);
    CHECK(added == N && ips_set_size(s) == N);
    size_t worst = ips_set_max_probe(s);
    if (worst > 64) {
        fprintf(stderr, "flooding: longest probe %zu after reseeding\n", worst);
        failures++;
    }
    static uint8_t out[N];
    ips_set_test_many(s, N, keys, NULL, NULL, NULL, out);
    for (int i = 0; i < N; i++)
        CHECK(out[i] == 1);
    ips_set_free(s);
}

/*
 * The load stays in its band whatever the history: at most 5/8 (1/2 for
 * tables packed in lines) after every insert, at least 1/5 after every
 * delete (until empty), 5/12 right after each growth; capacities are
 * multiples of 8; every key stays findable.
 */
static void test_load_band(void) {
    static const unsigned widths[] = {1, 2, 3, 4, 5, 9}; /* every key width, bucketed and tagged */
    for (unsigned wi = 0; wi < sizeof widths / sizeof *widths; wi++) {
        const unsigned W = widths[wi];
        const size_t unit = tbl_cap_unit(W);
        ips_table t;
        tbl_init(&t, W, 0xFFFFFFFFu, 77);
        enum { N = 20000 };
        uint32_t k[IPS_MAX_WORDS] = {0};
        size_t growths = 0;
        for (uint32_t i = 1; i <= N; i++) {
            const size_t cap = t.cap;
            k[0] = i * 2654435761u;
            k[W - 1] |= 1; /* never the zero key */
            bool added = false;
            CHECK(tbl_upsert(&t, k, &added) == IPS_OK && added);
            CHECK(t.cap % 8 == 0 && t.cap % unit == 0 && t.count <= tbl_max_count(t.cap, W));
            if (t.cap != cap && cap != 0) {
                growths++;
                CHECK(t.cap * 5 >= t.count * 12 - 5 * unit && t.cap * 5 <= t.count * 12 + 5 * unit); /* 5/12 */
            }
        }
        CHECK(growths >= 10 && tbl_size(&t) == N && counts_exact(&t));
        for (uint32_t i = 1; i <= N; i++) {
            k[0] = i * 2654435761u;
            k[W - 1] |= 1;
            CHECK(tbl_contains(&t, k, W));
            bool removed = false;
            CHECK(tbl_remove(&t, k, &removed) == IPS_OK && removed);
            CHECK(t.count == 0 || t.cap <= unit || t.count * 5 >= t.cap - 5);
        }
        CHECK(t.cap == 0 && tbl_size(&t) == 0);
        tbl_release(&t);
    }
}

/* The evaluator's chain semantics on a hand-made program. */
static void test_evaluator(void) {
    ips_status st;
    ips_set *pods = ips_set_new(IPS_HASH_IP, IPS_INET, 3, &st);
    ips_set *block = ips_set_new(IPS_HASH_NET, IPS_INET, 3, &st);
    add_text(pods, "192.0.2.1");
    add_text(block, "198.51.100.0/24");
    add_text(block, "198.51.100.128/25 nomatch");
    CHECK(ips_set_prepare(block) == IPS_OK);
    ips_set *sets[2] = {pods, block};
    /* chain 0 (entry): [src in pods -> JUMP 1] [mark 1 -> ACCEPT] [src in block -> GOTO 2] [DROP]
     * chain 1: [tcp dport 80..90 -> MARK 1] [RETURN] [MARK 2 (never reached)]
     * chain 2: [udp -> ACCEPT]  (falls off: returns past the entry chain: ACCEPT) */
    ips_match m[] = {
        {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 0, 0, 0},   /* 0: src in pods */
        {IPS_MATCH_MARK, 0, 0, 0, 1, 1},             /* 1: mark 1 */
        {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 0, 0},   /* 2: src in block */
        {IPS_MATCH_PROTO, 0, 0, 0, 6, 0},            /* 3: tcp */
        {IPS_MATCH_DPORT, 0, 0, 0, 80, 90},          /* 4: dport 80..90 */
        {IPS_MATCH_PROTO, 0, 0, 0, 17, 0},           /* 5: udp */
        {IPS_MATCH_STATE, 0, 0, 0, IPS_STATE_ESTABLISHED, 0}, /* 6: never for NEW flows */
    };
    ips_rule r[] = {
        {IPS_TARGET_ACCEPT, 0, 0, 0, 0, 6, 1},
        {IPS_TARGET_JUMP, 0, 1, 0, 0, 0, 1},
        {IPS_TARGET_ACCEPT, 0, 0, 0, 0, 1, 1},
        {IPS_TARGET_GOTO, 0, 2, 0, 0, 2, 1},
        {IPS_TARGET_DROP, 0, 0, 0, 0, 0, 0},
        {IPS_TARGET_MARK, 1, 0, 1, 0, 3, 2},
        {IPS_TARGET_RETURN, 1, 0, 0, 0, 0, 0},
        {IPS_TARGET_MARK, 1, 0, 2, 0, 0, 0},
        {IPS_TARGET_ACCEPT, 2, 0, 0, 0, 5, 1},
    };
    uint32_t first[] = {0, 5, 8}, len[] = {5, 3, 1};
    char why[256];
    ips_program *p = ips_program_new(IPS_INET, 2, sets, 3, first, len, 9, r, 7, m, 0, NULL, 0, &st, why, sizeof why);
    CHECK(p != NULL);
    enum { N = 6 };
    uint32_t src[N] = {0xC0000201u /* pod */, 0xC0000201u, 0xC6336405u /* block */, 0xC6336405u,
                       0xC6336481u /* nomatch part */, 0xCB007101u /* elsewhere */};
    uint32_t dst[N] = {0};
    uint8_t proto[N] = {6, 6, 17, 6, 17, 6};
    uint16_t port[N] = {85, 91, 1, 1, 1, 85};
    uint8_t v[N];
    int32_t rule[N], mark[N];
    ips_program_eval(p, N, src, dst, proto, port, v, rule, mark);
    /* pod on tcp/85: marked in chain 1, accepted by rule 2 */
    CHECK(v[0] == 1 && rule[0] == 2 && mark[0] == 5);
    /* pod on tcp/91: not marked, not in block: DROP at rule 4 */
    CHECK(v[1] == 0 && rule[1] == 4 && mark[1] == -1);
    /* block udp: GOTO 2 accepts */
    CHECK(v[2] == 1 && rule[2] == 8);
    /* block tcp: chain 2 falls off, and a GOTO from the entry chain returns past it: the policy, ACCEPT */
    CHECK(v[3] == 1 && rule[3] == -1);
    /* nomatch part of the block: DROP */
    CHECK(v[4] == 0 && rule[4] == 4);
    CHECK(v[5] == 0);
    /* Mark slots: slot 0 traces bit 1 (rule 5, entered by the JUMP at rule 1),
     * slot 1 traces bit 2 (never set); slot 2 traces both bits. */
    uint32_t masks[IPS_MAX_MARK_SLOTS + 1] = {1, 2, 3};
    for (int k = 3; k <= IPS_MAX_MARK_SLOTS; k++)
        masks[k] = 4u << k;
    CHECK(ips_program_set_mark_slots(p, IPS_MAX_MARK_SLOTS + 1, masks) == IPS_ERR_INVALID);
    uint32_t empty = 0;
    CHECK(ips_program_set_mark_slots(p, 1, &empty) == IPS_ERR_INVALID);
    CHECK(ips_program_set_mark_slots(p, 3, masks) == IPS_OK);
    int32_t slots[N * 3 * 2];
    memset(slots, 0x55, sizeof slots);
    ips_program_eval_threads(p, N, src, dst, proto, port, v, rule, mark, slots, 1);
    CHECK(slots[0] == 5 && slots[1] == 1 && slots[2] == -1 && slots[3] == -1 && slots[4] == 5 && slots[5] == 1);
    for (int i = 1; i < N; i++)
        for (int k = 0; k < 6; k++)
            CHECK(slots[i * 6 + k] == -1);
    CHECK(ips_program_set_mark_slots(p, 0, NULL) == IPS_OK);
    /* With the membership index: the same answers; after a change and a new
     * prepare, the index follows the sets. */
    CHECK(ips_program_prepare_for(p, 1) == IPS_OK); /* a small batch: no dispatch, nothing indexed */
    uint8_t v2[N];
    int32_t rule2[N], mark2[N];
    ips_program_eval(p, N, src, dst, proto, port, v2, rule2, mark2);
    CHECK(memcmp(v, v2, sizeof v) == 0 && memcmp(rule, rule2, sizeof rule) == 0);
    CHECK(ips_program_prepare(p) == IPS_OK);
    ips_program_eval(p, N, src, dst, proto, port, v2, rule2, mark2);
    CHECK(memcmp(v, v2, sizeof v) == 0 && memcmp(rule, rule2, sizeof rule) == 0);
    add_text(pods, "203.0.113.1"); /* src[5] becomes a pod: tcp/85 is now marked and accepted */
    CHECK(ips_program_prepare(p) == IPS_OK);
    ips_program_eval(p, N, src, dst, proto, port, v2, rule2, mark2);
    CHECK(v2[5] == 1 && rule2[5] == 2);
    ips_program_free(p);

    /* A loop is refused with a reason, as iptables refuses it. */
    ips_rule loop[] = {{IPS_TARGET_JUMP, 0, 1, 0, 0, 0, 0}, {IPS_TARGET_JUMP, 1, 0, 0, 0, 0, 0}};
    uint32_t lf[] = {0, 1}, ll[] = {1, 1};
    p = ips_program_new(IPS_INET, 0, NULL, 2, lf, ll, 2, loop, 0, NULL, 0, NULL, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "loop"));
    /* A rate limit is only for rules that decide nothing. */
    ips_match lim = {IPS_MATCH_LIMIT, 0, 0, 0, 10, 20};
    ips_rule dropper = {IPS_TARGET_DROP, 0, 0, 0, 0, 0, 1};
    uint32_t lf0 = 0, ll1 = 1;
    p = ips_program_new(IPS_INET, 0, NULL, 1, &lf0, &ll1, 1, &dropper, 1, &lim, 0, NULL, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "rate limit"));
    /* A set match whose dims do not fit the set type is refused. */
    ips_match bad = {IPS_MATCH_SET, IPS_DIMS_DST_DPORT, 0, 0, 0, 0};
    ips_rule one = {IPS_TARGET_ACCEPT, 0, 0, 0, 0, 0, 1};
    uint32_t f0 = 0, l1 = 1;
    p = ips_program_new(IPS_INET, 2, sets, 1, &f0, &l1, 1, &one, 1, &bad, 0, NULL, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "does not fit"));
    ips_set_free(pods);
    ips_set_free(block);
}

static uint32_t xorshift(uint32_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Address matches (-s / -d): against a plain masked compare, both families,
 * negated or not, on random addresses near and inside random networks. */
static void test_evaluator_addr(void) {
    ips_status st;
    char why[256];
    uint32_t seed = 7;
    for (int trial = 0; trial < 200; trial++) {
        bool v6 = trial % 2;
        unsigned W = v6 ? 4 : 1, prefix = xorshift(&seed) % (32 * W + 1);
        ips_net6 net = {{0}, {0}};
        for (unsigned k = 0; k < W; k++) {
            unsigned bits = prefix > 32 * k ? (prefix - 32 * k > 32 ? 32 : prefix - 32 * k) : 0;
            net.mask[k] = bits ? 0xFFFFFFFFu << (32 - bits) : 0;
            net.addr[k] = xorshift(&seed) & net.mask[k];
        }
        uint8_t dims = xorshift(&seed) & 1 ? IPS_DIMS_DST : IPS_DIMS_SRC, negate = xorshift(&seed) & 1;
        ips_match m = {IPS_MATCH_ADDR, dims, negate, 0, v6 ? 0 : net.addr[0], v6 ? 0 : net.mask[0]};
        ips_rule r[] = {{IPS_TARGET_ACCEPT, 0, 0, 0, 0, 0, 1}, {IPS_TARGET_DROP, 0, 0, 0, 0, 0, 0}};
        uint32_t first = 0, len = 2;
        ips_program *p = ips_program_new(v6 ? IPS_INET6 : IPS_INET, 0, NULL, 1, &first, &len, 2, r, 1, &m,
                                         v6 ? 1 : 0, v6 ? &net : NULL, 0, &st, why, sizeof why);
        CHECK(p != NULL);
        enum { N = 64 };
        uint32_t w[2][N][4];
        uint8_t src[N * 16], dst[N * 16], proto[N] = {0}, v[N];
        uint16_t port[N] = {0};
        for (unsigned i = 0; i < N; i++)
            for (unsigned side = 0; side < 2; side++)
                for (unsigned k = 0; k < W; k++) {
                    /* half inside the network, half with one random bit flipped somewhere */
                    uint32_t x = net.addr[k] | (xorshift(&seed) & ~net.mask[k]);
                    if (i % 2 && xorshift(&seed) % W == k)
                        x ^= 1u << (xorshift(&seed) % 32);
                    w[side][i][k] = x;
                    if (v6) {
                        uint8_t *b = (side ? dst : src) + 16 * i + 4 * k;
                        b[0] = x >> 24, b[1] = x >> 16, b[2] = x >> 8, b[3] = x;
                    } else {
                        ((uint32_t *)(side ? dst : src))[i] = x;
                    }
                }
        ips_program_eval(p, N, src, dst, proto, port, v, NULL, NULL);
        for (unsigned i = 0; i < N; i++) {
            const uint32_t *a = w[dims == IPS_DIMS_DST][i];
            bool in = true;
            for (unsigned k = 0; k < W; k++)
                in = in && (a[k] & net.mask[k]) == net.addr[k];
            CHECK(v[i] == (in != negate));
        }
        ips_program_free(p);
    }
    /* Bits outside the mask, an IPv6 network for an IPv4 program, a missing network: refused. */
    ips_rule one = {IPS_TARGET_ACCEPT, 0, 0, 0, 0, 0, 1};
    uint32_t f0 = 0, l1 = 1;
    ips_match loose = {IPS_MATCH_ADDR, IPS_DIMS_SRC, 0, 0, 0xC0000201u, 0xFFFFFF00u};
    ips_program *p = ips_program_new(IPS_INET, 0, NULL, 1, &f0, &l1, 1, &one, 1, &loose, 0, NULL, 0, &st, why,
                                     sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "outside its mask"));
    ips_net6 n6 = {{1, 0, 0, 0}, {0xFFFFFFFFu, 0, 0, 0}};
    ips_match six = {IPS_MATCH_ADDR, IPS_DIMS_DST, 0, 0, 0, 0};
    p = ips_program_new(IPS_INET, 0, NULL, 1, &f0, &l1, 1, &one, 1, &six, 1, &n6, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "IPv6 networks"));
    six.set = 1;
    p = ips_program_new(IPS_INET6, 0, NULL, 1, &f0, &l1, 1, &one, 1, &six, 1, &n6, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "names no network"));
    n6.addr[1] = 1;
    six.set = 0;
    p = ips_program_new(IPS_INET6, 0, NULL, 1, &f0, &l1, 1, &one, 1, &six, 1, &n6, 0, &st, why, sizeof why);
    CHECK(p == NULL && st == IPS_ERR_INVALID && strstr(why, "outside its mask"));
}

/* A verdict map: chain 0 dispatches the source to chain 1 (set a) or chain 2
 * (set b), else goes on to DROP; chain 1 accepts, chain 2 drops. The same
 * answers with and without the membership index; malformed maps refused. */
static void test_evaluator_dispatch(void) {
    ips_status st;
    ips_set *a = ips_set_new(IPS_HASH_IP, IPS_INET, 3, &st), *b = ips_set_new(IPS_HASH_IP, IPS_INET, 3, &st),
            *other = ips_set_new(IPS_HASH_IP, IPS_INET, 3, &st);
    add_text(a, "192.0.2.1");
    add_text(b, "192.0.2.2");
    add_text(other, "192.0.2.1"); /* in a set no entry names: must not confuse the dispatch */
    ips_set *sets[3] = {other, a, b};
    ips_match m[] = {
        {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 1, 0}, /* entry: a -> chain 1 */
        {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 2, 2, 0}, /* entry: b -> chain 2 */
        {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 0, 0, 0}, /* src in other (unused by rules below) */
    };
    ips_rule r[] = {
        {IPS_TARGET_DISPATCH, 0, 2, 0, 0, 0, 0},
        {IPS_TARGET_DROP, 0, 0, 0, 0, 0, 0},
        {IPS_TARGET_ACCEPT, 1, 0, 0, 0, 0, 0},
        {IPS_TARGET_DROP, 2, 0, 0, 0, 0, 0},
    };
    uint32_t first[] = {0, 2, 3}, len[] = {2, 1, 1};
    char why[256];
    ips_program *p = ips_program_new(IPS_INET, 3, sets, 3, first, len, 4, r, 3, m, 0, NULL, 0, &st, why, sizeof why);
    CHECK(p != NULL);
    enum { N = 3 };
    uint32_t src[N] = {0xC0000201u, 0xC0000202u, 0xC0000203u}, dst[N] = {0};
    uint8_t proto[N] = {6, 6, 6};
    uint16_t port[N] = {80, 80, 80};
    for (int pass = 0; pass < 3; pass++) { /* without, with the dispatch entries' index, with the whole index */
        uint8_t v[N];
        int32_t rule[N], mark[N];
        if (pass)
            CHECK((pass == 1 ? ips_program_prepare_for(p, 1) : ips_program_prepare(p)) == IPS_OK);
        ips_program_eval(p, N, src, dst, proto, port, v, rule, mark);
        CHECK(v[0] == 1 && rule[0] == 2);
        CHECK(v[1] == 0 && rule[1] == 3);
        CHECK(v[2] == 0 && rule[2] == 1); /* in no entry: goes on */
    }
    ips_program_free(p);
    /* Refused: an entry to a chain that does not exist, a set in two entries,
     * entries of different dims, entries past the matches, a loop through a dispatch. */
    ips_match bad_chain[] = {{IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 7, 0}};
    CHECK(!ips_program_new(IPS_INET, 3, sets, 3, first, len, 4, r, 1, bad_chain, 0, NULL, 0, &st, why, sizeof why));
    ips_match twice[] = {{IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 1, 0}, {IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 2, 0}};
    CHECK(!ips_program_new(IPS_INET, 3, sets, 3, first, len, 4, r, 2, twice, 0, NULL, 0, &st, why, sizeof why));
    ips_match dims[] = {{IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 1, 0}, {IPS_MATCH_SET, IPS_DIMS_DST, 0, 2, 2, 0}};
    CHECK(!ips_program_new(IPS_INET, 3, sets, 3, first, len, 4, r, 2, dims, 0, NULL, 0, &st, why, sizeof why));
    CHECK(!ips_program_new(IPS_INET, 3, sets, 3, first, len, 4, r, 1, m, 0, NULL, 0, &st, why, sizeof why));
    ips_match back[] = {{IPS_MATCH_SET, IPS_DIMS_SRC, 0, 1, 0, 0}};
    ips_rule self[] = {{IPS_TARGET_DISPATCH, 0, 1, 0, 0, 0, 0}};
    uint32_t f0 = 0, l1 = 1;
    CHECK(!ips_program_new(IPS_INET, 3, sets, 1, &f0, &l1, 1, self, 1, back, 0, NULL, 0, &st, why, sizeof why));
    CHECK(strstr(why, "loop") != NULL);
    ips_set_free(a);
    ips_set_free(b);
    ips_set_free(other);
}

int main(void) {
    test_evaluator_dispatch();
    test_evaluator_addr();
    test_parse_format();
    test_zero_and_extremes();
    test_net_nomatch();
    test_churn();
    test_table_churn();
    test_batch_matches_single();
    test_net_index_random();
    test_flooding_reseeds();
    test_load_band();
    test_evaluator();
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("all C core tests passed\n");
    return 0;
}

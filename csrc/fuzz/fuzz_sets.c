/*
 * Fuzz target for the sets themselves: the input is a sequence of operations
 * (add, delete, test, a host lookup, batch test, batch add, clear, prepare)
 * on one set of any type and family, over a small key space so that keys
 * collide, grow, shrink and come back. After every operation the set's
 * answer is compared with a model that is a plain list of entries and a
 * linear search (for hash:net: the longest prefix holding a host, nomatch
 * answering false), and at the end its size and its iteration equal the
 * model's. The first byte picks the type and family.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pyipset/ipset_core.h"

static void require(int cond) {
    if (!cond)
        abort();
}

enum { KEYS = 256 };

typedef struct {
    ips_entry e[KEYS]; /* canonical entries (hash:net: host bits cleared) */
    size_t n;
} model;

static int addr_bytes(ips_family f) { return f == IPS_INET ? 4 : 16; }

/* A key from a byte, injective for the non-net types; for hash:net a network
 * of one of five prefix lengths over a few overlapping bases. */
static ips_entry key(ips_type type, ips_family f, uint8_t k) {
    ips_entry e;
    memset(&e, 0, sizeof e);
    const int n = addr_bytes(f);
    if (f == IPS_INET6) {
        e.ip[0] = 0x20, e.ip[1] = 0x01, e.ip[2] = 0x0d, e.ip[3] = 0xb8;
        e.ip2[0] = 0x20, e.ip2[1] = 0x01, e.ip2[2] = 0x0d, e.ip2[3] = 0xb8;
    } else {
        e.ip[0] = 198, e.ip[1] = 18;
        e.ip2[0] = 198, e.ip2[1] = 19;
    }
    e.cidr = (uint8_t)(n * 8);
    switch (type) {
    case IPS_HASH_IP:
        e.ip[n - 1] = k;
        e.ip[n - 2] = (uint8_t)(k * 37);
        break;
    case IPS_HASH_IP_PORT:
        e.ip[n - 1] = k >> 3;
        e.proto = (k & 4) ? 17 : 6;
        e.port = (uint16_t)((k & 3) * 1000 + 80);
        break;
    case IPS_HASH_IP_PORT_IP:
        e.ip[n - 1] = k >> 4;
        e.proto = 6;
        e.port = (uint16_t)(k & 3);
        e.ip2[n - 1] = (k >> 2) & 3;
        break;
    case IPS_HASH_NET: {
        static const uint8_t v4[5] = {16, 20, 24, 28, 32}, v6[5] = {32, 64, 112, 124, 128};
        e.cidr = f == IPS_INET ? v4[k % 5] : v6[k % 5];
        e.ip[n - 1] = (uint8_t)((k / 5) * 29);
        e.ip[n - 2] = (uint8_t)((k / 5) & 3);
        for (int b = 0; b < n; b++) { /* clear host bits, as the set does */
            int keep = e.cidr - b * 8;
            e.ip[b] &= keep >= 8 ? 0xFF : keep <= 0 ? 0 : (uint8_t)(0xFF << (8 - keep));
        }
        break;
    }
    }
    return e;
}

static bool same(ips_type type, ips_family f, const ips_entry *a, const ips_entry *b) {
    const int n = addr_bytes(f);
    if (memcmp(a->ip, b->ip, n) != 0)
        return false;
    if (type == IPS_HASH_NET)
        return a->cidr == b->cidr;
    if (type == IPS_HASH_IP_PORT_IP && memcmp(a->ip2, b->ip2, n) != 0)
        return false;
    return type == IPS_HASH_IP || (a->proto == b->proto && a->port == b->port);
}

static long find(const model *m, ips_type type, ips_family f, const ips_entry *e) {
    for (size_t i = 0; i < m->n; i++)
        if (same(type, f, &m->e[i], e))
            return (long)i;
    return -1;
}

static bool in_net(ips_family f, const ips_entry *net, const uint8_t *host) {
    for (int b = 0; b < addr_bytes(f); b++) {
        int keep = net->cidr - b * 8;
        uint8_t mask = keep >= 8 ? 0xFF : keep <= 0 ? 0 : (uint8_t)(0xFF << (8 - keep));
        if ((host[b] & mask) != net->ip[b])
            return false;
    }
    return true;
}

/* The model's answer for a host address of a hash:net set: the longest prefix holding it decides. */
static bool model_host(const model *m, ips_family f, const uint8_t *host) {
    int best = -1;
    bool answer = false;
    for (size_t i = 0; i < m->n; i++)
        if (m->e[i].cidr > best && in_net(f, &m->e[i], host))
            best = m->e[i].cidr, answer = !m->e[i].nomatch;
    return answer;
}

static bool model_test(const model *m, ips_type type, ips_family f, const ips_entry *q) {
    if (type == IPS_HASH_NET && q->cidr == addr_bytes(f) * 8)
        return model_host(m, f, q->ip);
    long i = find(m, type, f, q);
    return i >= 0 && !m->e[i].nomatch;
}

enum { BATCH = 8 };

/* The columns of a batch call (ips_set_test_many, ips_set_add_many). */
typedef struct {
    uint32_t ip4[BATCH], ip4b[BATCH];
    uint8_t ip6[16 * BATCH], ip6b[16 * BATCH], proto[BATCH], cidr[BATCH];
    uint16_t port[BATCH];
} columns;

/* n keys from k on, `step` apart (hosts: for hash:net, a host inside each
 * network, as batch lookups take), into q and the columns c. */
static void fill(ips_type type, ips_family f, uint8_t k, size_t n, unsigned step, bool hosts, ips_entry *q,
                 columns *c) {
    for (size_t i = 0; i < n; i++) {
        q[i] = key(type, f, (uint8_t)(k + i * step));
        if (hosts && type == IPS_HASH_NET) {
            q[i].cidr = (uint8_t)(addr_bytes(f) * 8);
            q[i].ip[addr_bytes(f) - 1] |= (uint8_t)i;
        }
        if (f == IPS_INET) {
            c->ip4[i] = (uint32_t)q[i].ip[0] << 24 | (uint32_t)q[i].ip[1] << 16 | (uint32_t)q[i].ip[2] << 8 |
                        q[i].ip[3];
            c->ip4b[i] = (uint32_t)q[i].ip2[0] << 24 | (uint32_t)q[i].ip2[1] << 16 | (uint32_t)q[i].ip2[2] << 8 |
                         q[i].ip2[3];
        } else {
            memcpy(c->ip6 + 16 * i, q[i].ip, 16);
            memcpy(c->ip6b + 16 * i, q[i].ip2, 16);
        }
        c->proto[i] = q[i].proto, c->port[i] = q[i].port, c->cidr[i] = q[i].cidr;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const ips_type type = (ips_type)(data[0] & 3);
    const ips_family f = (data[0] & 4) ? IPS_INET6 : IPS_INET;
    ips_status st;
    ips_set *s = ips_set_new(type, f, 1 + (data[0] >> 3), &st);
    require(s != NULL);
    static model m;
    m.n = 0;
    for (size_t at = 1; at + 1 < size; at += 2) {
        const uint8_t op = data[at], k = data[at + 1];
        ips_entry e = key(type, f, k);
        bool did;
        switch (op & 7) {
        case 0: { /* add (hash:net: nomatch from the op's bit) */
            e.nomatch = type == IPS_HASH_NET && (op & 0x10);
            require(ips_set_add(s, &e, &did) == IPS_OK);
            long i = find(&m, type, f, &e);
            require(did == (i < 0) || (type == IPS_HASH_NET && i >= 0));
            if (i < 0)
                m.e[m.n++] = e;
            else
                m.e[i].nomatch = e.nomatch; /* re-adding updates the flag, as `ipset add -exist` */
            break;
        }
        case 1: { /* delete */
            require(ips_set_del(s, &e, &did) == IPS_OK);
            long i = find(&m, type, f, &e);
            require(did == (i >= 0));
            if (i >= 0)
                m.e[i] = m.e[--m.n];
            break;
        }
        case 2: /* test the key */
            require(ips_set_test(s, &e) == model_test(&m, type, f, &e));
            break;
        case 3: { /* a host inside the key: longest prefix for hash:net, the key itself otherwise */
            if (type == IPS_HASH_NET) {
                e.cidr = (uint8_t)(addr_bytes(f) * 8);
                e.ip[addr_bytes(f) - 1] |= (uint8_t)(op >> 4);
            }
            require(ips_set_test(s, &e) == model_test(&m, type, f, &e));
            break;
        }
        case 4: { /* batch test of the next keys (after prepare every other time) */
            static columns c;
            static uint8_t out[BATCH];
            ips_entry q[BATCH];
            fill(type, f, k, BATCH, 17, true, q, &c);
            if (op & 0x10)
                require(ips_set_prepare(s) == IPS_OK);
            ips_set_test_many(s, BATCH, f == IPS_INET ? (const void *)c.ip4 : c.ip6, c.proto, c.port,
                              f == IPS_INET ? (const void *)c.ip4b : c.ip6b, out);
            for (size_t i = 0; i < BATCH; i++)
                require(out[i] == model_test(&m, type, f, &q[i]));
            break;
        }
        case 5: { /* batch add of the next keys */
            enum { B = 4 };
            static columns c;
            ips_entry q[B];
            fill(type, f, k, B, 3, false, q, &c);
            size_t added = 0, bad = 0;
            require(ips_set_add_many(s, B, f == IPS_INET ? (const void *)c.ip4 : c.ip6, c.proto, c.port,
                                     f == IPS_INET ? (const void *)c.ip4b : c.ip6b, c.cidr, false, &added,
                                     &bad) == IPS_OK);
            size_t fresh = 0;
            for (size_t i = 0; i < B; i++) {
                long j = find(&m, type, f, &q[i]);
                if (j < 0) {
                    m.e[m.n++] = q[i];
                    fresh++;
                } else {
                    m.e[j].nomatch = false;
                }
            }
            require(added == fresh);
            break;
        }
        case 6:
            if ((op & 0xF0) == 0x60) { /* rarely: clear */
                ips_set_clear(s);
                m.n = 0;
            }
            break;
        case 7:
            require(ips_set_prepare(s) == IPS_OK);
            break;
        }
        require(ips_set_size(s) == m.n);
    }
    size_t cursor = 0, seen = 0;
    ips_entry out;
    while (ips_set_next(s, &cursor, &out)) {
        long i = find(&m, type, f, &out);
        require(i >= 0 && (type != IPS_HASH_NET || m.e[i].nomatch == out.nomatch));
        seen++;
    }
    require(seen == m.n);
    ips_set_free(s);
    return 0;
}

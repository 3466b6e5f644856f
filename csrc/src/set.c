/*
 * Set types on top of the shared table: how each type packs an entry into
 * key words, and the single and batch operations.
 *
 * Key layouts (A = address words: 1 for inet, 4 for inet6, most significant
 * word first):
 *   hash:ip          [ip(A)]
 *   hash:ip,port     [ip(A), proto<<16 | port]
 *   hash:ip,port,ip  [ip(A), proto<<16 | port, ip2(A)]
 *   hash:net         [network(A), (prefix+1) | nomatch<<8]
 * Port types never produce an all-zero key (protocol 0 is refused) and
 * hash:net stores prefix+1, so only hash:ip can hold the zero key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "netindex.h"
#include "set_internal.h"
#include "table.h"

#define NET_NOMATCH_BIT 0x100u
#define NET_PREFIX_MASK 0xFFu

struct ips_set {
    ips_type type;
    ips_family family;
    unsigned aw; /* address words */
    ips_table table;
    /* hash:net only */
    uint64_t changes; /* counts changes to membership: lets derived data know it is stale */
    uint32_t prefix_count[129];
    bool index_fresh;
    ips_netindex index;
};

const char *ips_type_name(ips_type type) {
    switch (type) {
    case IPS_HASH_IP: return "hash:ip";
    case IPS_HASH_IP_PORT: return "hash:ip,port";
    case IPS_HASH_IP_PORT_IP: return "hash:ip,port,ip";
    case IPS_HASH_NET: return "hash:net";
    }
    return NULL;
}

ips_status ips_type_from_name(const char *name, size_t len, ips_type *out) {
    for (int t = IPS_HASH_IP; t <= IPS_HASH_NET; t++) {
        const char *n = ips_type_name((ips_type)t);
        if (strlen(n) == len && memcmp(n, name, len) == 0) {
            *out = (ips_type)t;
            return IPS_OK;
        }
    }
    return IPS_ERR_PARSE;
}

static unsigned key_words(ips_type type, unsigned aw) {
    switch (type) {
    case IPS_HASH_IP: return aw;
    case IPS_HASH_IP_PORT: return aw + 1;
    case IPS_HASH_IP_PORT_IP: return 2 * aw + 1;
    case IPS_HASH_NET: return aw + 1;
    }
    return 0;
}

ips_set *ips_set_new(ips_type type, ips_family family, uint64_t seed, ips_status *status) {
    if (ips_type_name(type) == NULL || (family != IPS_INET && family != IPS_INET6)) {
        if (status)
            *status = IPS_ERR_INVALID;
        return NULL;
    }
    ips_set *s = calloc(1, sizeof *s);
    if (!s) {
        if (status)
            *status = IPS_ERR_NOMEM;
        return NULL;
    }
    s->type = type;
    s->family = family;
    s->aw = family == IPS_INET ? 1 : 4;
    tbl_init(&s->table, key_words(type, s->aw), type == IPS_HASH_NET ? NET_PREFIX_MASK : 0xFFFFFFFFu, seed);
    if (status)
        *status = IPS_OK;
    return s;
}

void ips_set_free(ips_set *set) {
    if (!set)
        return;
    tbl_release(&set->table);
    netindex_free(&set->index);
    free(set);
}

ips_type ips_set_type(const ips_set *set) { return set->type; }
ips_family ips_set_family(const ips_set *set) { return set->family; }
size_t ips_set_size(const ips_set *set) { return tbl_size(&set->table); }

size_t ips_set_max_probe(const ips_set *set) { return tbl_max_probe(&set->table); }

size_t ips_set_memory(const ips_set *set) {
    return sizeof *set + tbl_memory(&set->table) + netindex_memory(&set->index);
}

static unsigned host_prefix(ips_family family) { return family == IPS_INET ? 32 : 128; }

static bool proto_has_ports(uint8_t proto) {
    return proto == 6 || proto == 17 || proto == 132 || proto == 136;
}

ips_status ips_entry_validate(ips_type type, ips_family family, const ips_entry *e, char *why, size_t why_len) {
    char dummy[1];
    if (!why) {
        why = dummy;
        why_len = sizeof dummy;
    }
    if (type == IPS_HASH_IP_PORT || type == IPS_HASH_IP_PORT_IP) {
        if (e->proto == 0) {
            snprintf(why, why_len, "protocol 0 is not valid (use 6 for tcp, 17 for udp, 132 for sctp)");
            return IPS_ERR_INVALID;
        }
        if (e->proto == 1 && family == IPS_INET6) {
            snprintf(why, why_len, "protocol icmp (1) is for family inet; use icmpv6 (58) in an inet6 set");
            return IPS_ERR_INVALID;
        }
        if (e->proto == 58 && family == IPS_INET) {
            snprintf(why, why_len, "protocol icmpv6 (58) is for family inet6; use icmp (1) in an inet set");
            return IPS_ERR_INVALID;
        }
        bool icmp = e->proto == 1 || e->proto == 58;
        if (!proto_has_ports(e->proto) && !icmp && e->port != 0) {
            snprintf(why, why_len, "protocol %u has no ports: port must be 0, not %u", e->proto, e->port);
            return IPS_ERR_INVALID;
        }
    }
    if (type == IPS_HASH_NET && e->cidr > host_prefix(family)) {
        snprintf(why, why_len, "prefix length %u is longer than %u", e->cidr, host_prefix(family));
        return IPS_ERR_INVALID;
    }
    if (type != IPS_HASH_NET && e->nomatch) {
        snprintf(why, why_len, "nomatch is only valid in hash:net sets");
        return IPS_ERR_INVALID;
    }
    return IPS_OK;
}

IPS_INLINE uint32_t load_be32(const uint8_t *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

IPS_INLINE void store_be32(uint8_t *b, uint32_t v) {
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* Network words of addr masked to prefix len. */
static void mask_words(uint32_t *w, unsigned aw, unsigned len) {
    for (unsigned i = 0; i < aw; i++) {
        unsigned lo = i * 32;
        if (len <= lo)
            w[i] = 0;
        else if (len < lo + 32)
            w[i] &= ~(0xFFFFFFFFu >> (len - lo));
    }
}

/* Packs an entry; the hash:net key carries the nomatch flag only if with_flag. */
static void pack(const ips_set *s, const ips_entry *e, uint32_t *k, bool with_flag) {
    const unsigned aw = s->aw;
    for (unsigned i = 0; i < aw; i++)
        k[i] = load_be32(e->ip + 4 * i);
    switch (s->type) {
    case IPS_HASH_IP:
        break;
    case IPS_HASH_IP_PORT:
        k[aw] = (uint32_t)e->proto << 16 | e->port;
        break;
    case IPS_HASH_IP_PORT_IP:
        k[aw] = (uint32_t)e->proto << 16 | e->port;
        for (unsigned i = 0; i < aw; i++)
            k[aw + 1 + i] = load_be32(e->ip2 + 4 * i);
        break;
    case IPS_HASH_NET:
        mask_words(k, aw, e->cidr);
        k[aw] = (uint32_t)e->cidr + 1;
        if (with_flag && e->nomatch)
            k[aw] |= NET_NOMATCH_BIT;
        break;
    }
}

static void unpack(const ips_set *s, const uint32_t *k, ips_entry *e) {
    const unsigned aw = s->aw;
    memset(e, 0, sizeof *e);
    for (unsigned i = 0; i < aw; i++)
        store_be32(e->ip + 4 * i, k[i]);
    e->cidr = (uint8_t)host_prefix(s->family);
    switch (s->type) {
    case IPS_HASH_IP:
        break;
    case IPS_HASH_IP_PORT_IP:
        for (unsigned i = 0; i < aw; i++)
            store_be32(e->ip2 + 4 * i, k[aw + 1 + i]);
        /* fall through */
    case IPS_HASH_IP_PORT:
        e->proto = (uint8_t)(k[aw] >> 16);
        e->port = (uint16_t)k[aw];
        break;
    case IPS_HASH_NET:
        e->cidr = (uint8_t)((k[aw] & NET_PREFIX_MASK) - 1);
        e->nomatch = (k[aw] & NET_NOMATCH_BIT) != 0;
        break;
    }
}

static void changed(ips_set *s) {
    s->index_fresh = false;
    s->changes++;
}

uint64_t ips_set_changes(const ips_set *s) { return s->changes; }

ips_status ips_set_add(ips_set *s, const ips_entry *e, bool *added) {
    if (ips_entry_validate(s->type, s->family, e, NULL, 0) != IPS_OK)
        return IPS_ERR_INVALID;
    uint32_t k[IPS_MAX_WORDS];
    pack(s, e, k, true);
    bool is_new = false;
    ips_status st = tbl_upsert(&s->table, k, &is_new);
    if (st != IPS_OK)
        return st;
    if (s->type == IPS_HASH_NET && is_new)
        s->prefix_count[e->cidr]++;
    changed(s); /* a new entry, or a hash:net flag that may have flipped */
    if (added)
        *added = is_new;
    return IPS_OK;
}

ips_status ips_set_del(ips_set *s, const ips_entry *e, bool *removed) {
    if (s->type == IPS_HASH_NET && e->cidr > host_prefix(s->family))
        return IPS_ERR_INVALID;
    uint32_t k[IPS_MAX_WORDS];
    pack(s, e, k, false);
    bool gone = false;
    ips_status st = tbl_remove(&s->table, k, &gone);
    if (st != IPS_OK)
        return st;
    if (gone) {
        if (s->type == IPS_HASH_NET)
            s->prefix_count[e->cidr]--;
        changed(s);
    }
    if (removed)
        *removed = gone;
    return IPS_OK;
}

/* The kernel's hash:net lookup: each present prefix length, longest first. */
static bool net_lookup_by_probes(const ips_set *s, const uint32_t *addr) {
    const unsigned aw = s->aw, W = aw + 1;
    for (int len = (int)host_prefix(s->family); len >= 0; len--) {
        if (s->prefix_count[len] == 0)
            continue;
        uint32_t k[IPS_MAX_WORDS];
        memcpy(k, addr, aw * sizeof(uint32_t));
        mask_words(k, aw, (unsigned)len);
        k[aw] = (uint32_t)len + 1;
        const uint32_t *slot = tbl_lookup(&s->table, k, W);
        if (slot)
            return (slot[aw] & NET_NOMATCH_BIT) == 0;
    }
    return false;
}

bool ips_set_test(const ips_set *s, const ips_entry *e) {
    uint32_t k[IPS_MAX_WORDS];
    if (s->type != IPS_HASH_NET) {
        if (e->nomatch || ips_entry_validate(s->type, s->family, e, NULL, 0) != IPS_OK)
            return false;
        pack(s, e, k, false);
        return tbl_contains(&s->table, k, s->table.W);
    }
    if (e->cidr > host_prefix(s->family))
        return false;
    pack(s, e, k, false);
    if (e->cidr == host_prefix(s->family) && !e->nomatch) {
        if (s->index_fresh) {
            uint8_t hit;
            if (s->family == IPS_INET)
                netindex_test4(&s->index, 1, k, &hit);
            else
                netindex_test6(&s->index, 1, e->ip, &hit);
            return hit != 0;
        }
        return net_lookup_by_probes(s, k);
    }
    const uint32_t *slot = tbl_lookup(&s->table, k, s->table.W);
    return slot && ((slot[s->aw] & NET_NOMATCH_BIT) != 0) == e->nomatch;
}

bool ips_set_test_key(const ips_set *s, const uint32_t *a, uint8_t proto, uint16_t port, const uint32_t *b) {
    const unsigned aw = s->aw;
    if (s->type == IPS_HASH_NET) {
        if (!s->index_fresh)
            return net_lookup_by_probes(s, a);
        uint8_t hit;
        if (aw == 1) {
            netindex_test4(&s->index, 1, a, &hit);
        } else {
            uint8_t bytes[16];
            for (unsigned w = 0; w < 4; w++)
                store_be32(bytes + 4 * w, a[w]);
            netindex_test6(&s->index, 1, bytes, &hit);
        }
        return hit != 0;
    }
    uint32_t k[IPS_MAX_WORDS];
    for (unsigned w = 0; w < aw; w++)
        k[w] = a[w];
    if (s->type != IPS_HASH_IP)
        k[aw] = (uint32_t)proto << 16 | port;
    if (s->type == IPS_HASH_IP_PORT_IP)
        for (unsigned w = 0; w < aw; w++)
            k[aw + 1 + w] = b[w];
    return tbl_contains(&s->table, k, s->table.W);
}

void ips_set_clear(ips_set *s) {
    tbl_release(&s->table);
    memset(s->prefix_count, 0, sizeof s->prefix_count);
    netindex_free(&s->index);
    changed(s);
}

ips_status ips_set_reserve(ips_set *s, size_t extra) { return tbl_reserve(&s->table, extra); }

ips_status ips_set_prepare(ips_set *s) {
    if (s->type != IPS_HASH_NET || s->index_fresh)
        return IPS_OK;
    ips_status st = netindex_build(&s->index, &s->table, s->family);
    s->index_fresh = st == IPS_OK;
    return st;
}

bool ips_set_next(const ips_set *s, size_t *cursor, ips_entry *out) {
    const ips_table *t = &s->table;
    if (*cursor == 0) {
        *cursor = 1;
        if (t->zero_present) {
            uint32_t zero[IPS_MAX_WORDS] = {0};
            unpack(s, zero, out);
            return true;
        }
    }
    const size_t phys = tbl_phys(t);
    for (size_t i = *cursor - 1; i < phys; i++) {
        const uint32_t *slot = tbl_slot(t, i);
        if (!key_is_zero(slot, t->W)) {
            *cursor = i + 2;
            unpack(s, slot, out);
            return true;
        }
    }
    *cursor = phys + 1;
    return false;
}

/* ---- batch paths ---- */

/* Key of row i built straight from the columns (no ips_entry in between). */
IPS_INLINE void row_key(const unsigned aw, const unsigned W, size_t i, const void *ip, const uint8_t *proto,
                        const uint16_t *port, const void *ip2, uint32_t *k) {
    if (aw == 1) {
        k[0] = ((const uint32_t *)ip)[i];
    } else {
        const uint8_t *b = (const uint8_t *)ip + i * 16;
        for (unsigned w = 0; w < 4; w++)
            k[w] = load_be32(b + 4 * w);
    }
    if (W > aw)
        k[aw] = (uint32_t)proto[i] << 16 | port[i];
    if (W > aw + 1) {
        if (aw == 1) {
            k[aw + 1] = ((const uint32_t *)ip2)[i];
        } else {
            const uint8_t *b = (const uint8_t *)ip2 + i * 16;
            for (unsigned w = 0; w < 4; w++)
                k[aw + 1 + w] = load_be32(b + 4 * w);
        }
    }
}

#define BATCH_BLOCK 64

/*
 * Lookups run as a pipeline: row i is probed while row i + LOOKUP_AHEAD is
 * hashed and its home prefetched, so that many loads are always in flight,
 * which is what makes a table larger than the cache affordable (a 31 MB
 * table, 1M random queries: 9.3 ns a lookup in blocks of 32 hashed then
 * probed, 7.4 in blocks of 64, 6.4 as a pipeline 64 deep; 128 is no better).
 * W is a compile-time constant in each instantiation below.
 */
#define LOOKUP_AHEAD 64

/* The hash of row i, its home prefetched (and its tags, in tagged tables). */
IPS_INLINE uint64_t hash_ahead(const ips_table *t, const unsigned aw, const unsigned W, size_t i, const void *ip,
                               const uint8_t *proto, const uint16_t *port, const void *ip2) {
    uint32_t k[IPS_MAX_WORDS];
    row_key(aw, W, i, ip, proto, port, ip2, k);
    const uint64_t h = tbl_hash(t, k, W);
    IPS_PREFETCH(tbl_home_ptr(t, h, W));
    if (IPS_TAGGED(W))
        IPS_PREFETCH(t->tags + hash_home(t, h));
    return h;
}

IPS_INLINE void test_many_w(const ips_set *s, const unsigned aw, const unsigned W, size_t n, const void *ip, const uint8_t *proto,
                            const uint16_t *port, const void *ip2, uint8_t *out) {
    /* A local copy: stores through `out` (bytes) may alias anything, and
     * would otherwise make the compiler reload the table on every row. */
    const ips_table table = s->table;
    const ips_table *t = &table;
    if (t->cap == 0) {
        for (size_t i = 0; i < n; i++) {
            uint32_t k[IPS_MAX_WORDS];
            row_key(aw, W, i, ip, proto, port, ip2, k);
            out[i] = key_is_zero(k, W) && t->zero_present;
        }
        return;
    }
    uint64_t hash[LOOKUP_AHEAD]; /* of rows i .. i + LOOKUP_AHEAD - 1 */
    for (size_t i = 0; i < n && i < LOOKUP_AHEAD; i++)
        hash[i] = hash_ahead(t, aw, W, i, ip, proto, port, ip2);
    for (size_t i = 0; i < n; i++) {
        const size_t r = i % LOOKUP_AHEAD;
        /* The key again from the columns: cheaper than storing it. */
        uint32_t k[IPS_MAX_WORDS];
        row_key(aw, W, i, ip, proto, port, ip2, k);
        bool hit = tbl_probe(t, k, W, hash[r]);
        /* The zero key would match empty slots in an untagged window; it
         * lives beside the table (only hash:ip can hold it). A tagged
         * table's tag check never finds it. */
        if (!IPS_TAGGED(W))
            hit = key_is_zero(k, W) ? t->zero_present : hit;
        out[i] = hit;
        if (i + LOOKUP_AHEAD < n)
            hash[r] = hash_ahead(t, aw, W, i + LOOKUP_AHEAD, ip, proto, port, ip2);
    }
}

/* One instantiation per (address words, key words): every type and family. */
#define TEST_MANY_INSTANCE(AW, W)                                                                            \
    static void test_many_##AW##_##W(const ips_set *s, size_t n, const void *ip, const uint8_t *pr,          \
                                     const uint16_t *po, const void *ip2, uint8_t *out) {                   \
        test_many_w(s, AW, W, n, ip, pr, po, ip2, out);                                                      \
    }
TEST_MANY_INSTANCE(1, 1)
TEST_MANY_INSTANCE(1, 2)
TEST_MANY_INSTANCE(1, 3)
TEST_MANY_INSTANCE(4, 4)
TEST_MANY_INSTANCE(4, 5)
TEST_MANY_INSTANCE(4, 9)

void ips_set_test_many(const ips_set *s, size_t n, const void *ip, const uint8_t *proto, const uint16_t *port,
                       const void *ip2, uint8_t *out) {
    if (s->type == IPS_HASH_NET) {
        if (s->index_fresh) {
            if (s->family == IPS_INET)
                netindex_test4(&s->index, n, ip, out);
            else
                netindex_test6(&s->index, n, ip, out);
            return;
        }
        for (size_t i = 0; i < n; i++) {
            uint32_t k[IPS_MAX_WORDS];
            if (s->aw == 1)
                row_key(1, 1, i, ip, NULL, NULL, NULL, k);
            else
                row_key(4, 4, i, ip, NULL, NULL, NULL, k);
            out[i] = net_lookup_by_probes(s, k);
        }
        return;
    }
    switch (s->table.W) {
    case 1: test_many_1_1(s, n, ip, proto, port, ip2, out); break;
    case 2: test_many_1_2(s, n, ip, proto, port, ip2, out); break;
    case 3: test_many_1_3(s, n, ip, proto, port, ip2, out); break;
    case 4: test_many_4_4(s, n, ip, proto, port, ip2, out); break;
    case 5: test_many_4_5(s, n, ip, proto, port, ip2, out); break;
    default: test_many_4_9(s, n, ip, proto, port, ip2, out); break;
    }
}

/* Fills an ips_entry from row i of batch columns. */
static void row_entry(const ips_set *s, size_t i, const void *ip, const uint8_t *proto, const uint16_t *port,
                      const void *ip2, const uint8_t *cidr, bool nomatch, ips_entry *e) {
    memset(e, 0, sizeof *e);
    if (s->aw == 1)
        store_be32(e->ip, ((const uint32_t *)ip)[i]);
    else
        memcpy(e->ip, (const uint8_t *)ip + i * 16, 16);
    if (s->type == IPS_HASH_IP_PORT || s->type == IPS_HASH_IP_PORT_IP) {
        e->proto = proto[i];
        e->port = port[i];
    }
    if (s->type == IPS_HASH_IP_PORT_IP) {
        if (s->aw == 1)
            store_be32(e->ip2, ((const uint32_t *)ip2)[i]);
        else
            memcpy(e->ip2, (const uint8_t *)ip2 + i * 16, 16);
    }
    e->cidr = (uint8_t)host_prefix(s->family);
    if (s->type == IPS_HASH_NET) {
        if (cidr)
            e->cidr = cidr[i];
        e->nomatch = nomatch;
    }
}

static ips_status validate_rows(const ips_set *s, size_t n, const void *ip, const uint8_t *proto,
                                const uint16_t *port, const void *ip2, const uint8_t *cidr, size_t *bad_index) {
    size_t bad = n;
    if (s->type == IPS_HASH_IP_PORT || s->type == IPS_HASH_IP_PORT_IP) {
        /* What ips_entry_validate says of each protocol, asked once:
         * bit 0 = valid with port 0, bit 1 = valid with another port. */
        uint8_t ok[256];
        for (unsigned p = 0; p < 256; p++) {
            ips_entry e;
            memset(&e, 0, sizeof e);
            e.proto = (uint8_t)p;
            e.cidr = (uint8_t)host_prefix(s->family);
            ok[p] = ips_entry_validate(s->type, s->family, &e, NULL, 0) == IPS_OK;
            e.port = 1;
            ok[p] |= (uint8_t)((ips_entry_validate(s->type, s->family, &e, NULL, 0) == IPS_OK) << 1);
        }
        for (size_t i = 0; i < n && bad == n; i++)
            if (!(ok[proto[i]] >> (port[i] != 0) & 1))
                bad = i;
    } else if (s->type == IPS_HASH_NET && cidr) {
        for (size_t i = 0; i < n && bad == n; i++)
            if (cidr[i] > host_prefix(s->family))
                bad = i;
    }
    (void)ip;
    (void)ip2;
    if (bad == n)
        return IPS_OK;
    if (bad_index)
        *bad_index = bad;
    return IPS_ERR_INVALID;
}

/*
 * Bulk insert for the hash types: keys straight from the columns, hashed
 * and prefetched a block ahead, find and place in one pass. Rows that
 * need the slow path (a long run, the zero key) go through tbl_upsert, after
 * which the block's precomputed hashes may be stale (a rebuild may reseed).
 */
IPS_INLINE ips_status add_many_w(ips_set *s, const unsigned aw, const unsigned W, size_t n, const void *ip, const uint8_t *proto,
                                 const uint16_t *port, const void *ip2, size_t *added) {
    ips_table *t = &s->table;
    size_t count = 0;
    for (size_t i0 = 0; i0 < n; i0 += BATCH_BLOCK) {
        size_t cnt = n - i0 < BATCH_BLOCK ? n - i0 : BATCH_BLOCK;
        uint32_t keys[BATCH_BLOCK][IPS_MAX_WORDS];
        uint64_t hash[BATCH_BLOCK];
        for (size_t j = 0; j < cnt; j++) {
            row_key(aw, W, i0 + j, ip, proto, port, ip2, keys[j]);
            hash[j] = tbl_hash(t, keys[j], W);
            IPS_PREFETCH(tbl_home_ptr(t, hash[j], W));
        }
        bool stale = false;
        for (size_t j = 0; j < cnt; j++) {
            bool is_new = false;
            if (key_is_zero(keys[j], W) ||
                !tbl_insert_fast(t, keys[j], W, stale ? tbl_hash(t, keys[j], W) : hash[j], &is_new)) {
                ips_status st = tbl_upsert(t, keys[j], &is_new);
                if (st != IPS_OK) {
                    *added = count;
                    return st;
                }
                stale = true;
            }
            count += is_new;
        }
    }
    *added = count;
    return IPS_OK;
}

#define ADD_MANY_INSTANCE(AW, W)                                                                             \
    static ips_status add_many_##AW##_##W(ips_set *s, size_t n, const void *ip, const uint8_t *pr,            \
                                          const uint16_t *po, const void *ip2, size_t *added) {              \
        return add_many_w(s, AW, W, n, ip, pr, po, ip2, added);                                              \
    }
ADD_MANY_INSTANCE(1, 1)
ADD_MANY_INSTANCE(1, 2)
ADD_MANY_INSTANCE(1, 3)
ADD_MANY_INSTANCE(4, 4)
ADD_MANY_INSTANCE(4, 5)
ADD_MANY_INSTANCE(4, 9)

ips_status ips_set_add_many(ips_set *s, size_t n, const void *ip, const uint8_t *proto, const uint16_t *port,
                            const void *ip2, const uint8_t *cidr, bool nomatch, size_t *added, size_t *bad_index) {
    size_t ignored;
    if (!added)
        added = &ignored;
    *added = 0;
    ips_status st = validate_rows(s, n, ip, proto, port, ip2, cidr, bad_index);
    if (st != IPS_OK)
        return st;
    st = tbl_reserve(&s->table, n);
    if (st != IPS_OK)
        return st;
    if (s->type != IPS_HASH_NET) {
        changed(s);
        switch (s->table.W) {
        case 1: return add_many_1_1(s, n, ip, proto, port, ip2, added);
        case 2: return add_many_1_2(s, n, ip, proto, port, ip2, added);
        case 3: return add_many_1_3(s, n, ip, proto, port, ip2, added);
        case 4: return add_many_4_4(s, n, ip, proto, port, ip2, added);
        case 5: return add_many_4_5(s, n, ip, proto, port, ip2, added);
        default: return add_many_4_9(s, n, ip, proto, port, ip2, added);
        }
    }
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        ips_entry e;
        row_entry(s, i, ip, proto, port, ip2, cidr, nomatch, &e);
        bool is_new = false;
        st = ips_set_add(s, &e, &is_new);
        if (st != IPS_OK)
            break;
        count += is_new;
    }
    *added = count;
    return st;
}

ips_status ips_set_del_many(ips_set *s, size_t n, const void *ip, const uint8_t *proto, const uint16_t *port,
                            const void *ip2, const uint8_t *cidr, size_t *removed, size_t *bad_index) {
    if (removed)
        *removed = 0;
    ips_status st = validate_rows(s, n, ip, proto, port, ip2, cidr, bad_index);
    if (st != IPS_OK)
        return st;
    size_t count = 0;
    for (size_t i = 0; i < n; i++) {
        ips_entry e;
        row_entry(s, i, ip, proto, port, ip2, cidr, false, &e);
        bool gone = false;
        ips_set_del(s, &e, &gone);
        count += gone;
    }
    if (removed)
        *removed = count;
    return IPS_OK;
}

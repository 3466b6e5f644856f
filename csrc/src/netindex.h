/*
 * The hash:net lookup index: the address space cut into intervals, each with
 * one verdict (the flag of the longest prefix covering it: match, nomatch, or
 * nothing), found by a branch-free binary search.
 *
 * Why: the kernel's lookup probes one hash per prefix length present, so its
 * cost grows with the mix of lengths (up to 33 probes for IPv4, 129 for IPv6).
 * Flattening the prefixes once gives every address the same short search, and
 * keeps nomatch exact because verdicts are computed by longest prefix before
 * flattening. A top-level table by the leading k address bits narrows each
 * search to the intervals of one bucket; the number of search steps is fixed
 * per index (the largest bucket decides), so a batch of queries advances in
 * lockstep without branches.
 *
 * The index is derived data: the set's table stays the source of truth and
 * the index is rebuilt (O(m log m) for m prefixes) after changes.
 */
#ifndef PYIPSET_NETINDEX_H
#define PYIPSET_NETINDEX_H

#include <stddef.h>
#include <stdint.h>

#include "table.h"

typedef unsigned __int128 ips_u128;

typedef struct ips_netindex {
    size_t n;            /* intervals; starts[0] == 0 */
    uint32_t *starts4;   /* inet: interval starts, ascending */
    ips_u128 *starts6;   /* inet6: interval starts, ascending */
    uint8_t *verdict;    /* 1: addresses in the interval match */
    uint32_t *bucket;    /* 2^k + 1 entries: first candidate interval per bucket */
    unsigned k;          /* bucket bits */
    unsigned steps;      /* binary search steps within the largest bucket */
} ips_netindex;

/* Builds the index from a hash:net table; on IPS_ERR_NOMEM *ix is empty. */
ips_status netindex_build(ips_netindex *ix, const ips_table *t, ips_family family);
void netindex_free(ips_netindex *ix);
size_t netindex_memory(const ips_netindex *ix);

void netindex_test4(const ips_netindex *ix, size_t n, const uint32_t *addr, uint8_t *out);
void netindex_test6(const ips_netindex *ix, size_t n, const uint8_t *addr16, uint8_t *out);

IPS_INLINE ips_u128 ips_load_u128_be(const uint8_t *b) {
    ips_u128 v = 0;
    for (int i = 0; i < 16; i++)
        v = (v << 8) | b[i];
    return v;
}

#endif

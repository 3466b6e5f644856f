#include "netindex.h"

#include <stdlib.h>
#include <string.h>

typedef struct prefix_rec {
    ips_u128 start, end;
    uint8_t len;
    uint8_t verdict;
} prefix_rec;

typedef struct boundary {
    ips_u128 pos;
    uint8_t verdict;
} boundary;

static int cmp_prefix(const void *a, const void *b) {
    const prefix_rec *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return (int)x->len - (int)y->len; /* wider first, so the narrower one decides */
}

static unsigned ceil_log2(size_t v) {
    unsigned r = 0;
    while (((size_t)1 << r) < v)
        r++;
    return r;
}

void netindex_free(ips_netindex *ix) {
    free(ix->starts4);
    free(ix->starts6);
    free(ix->verdict);
    free(ix->bucket);
    memset(ix, 0, sizeof *ix);
}

size_t netindex_memory(const ips_netindex *ix) {
    size_t per = ix->starts4 ? sizeof(uint32_t) : ix->starts6 ? sizeof(ips_u128) : 0;
    size_t buckets = ix->bucket ? ((size_t)1 << ix->k) + 1 : 0;
    return ix->n * (per + 1) + buckets * sizeof(uint32_t);
}

/* Appends an event; a later event at the same position replaces the earlier. */
static void emit(boundary *out, size_t *n, ips_u128 pos, uint8_t verdict) {
    if (*n > 0 && out[*n - 1].pos == pos) {
        out[*n - 1].verdict = verdict;
        return;
    }
    out[*n].pos = pos;
    out[*n].verdict = verdict;
    (*n)++;
}

ips_status netindex_build(ips_netindex *ix, const ips_table *t, ips_family family) {
    netindex_free(ix);
    const unsigned W = t->W, aw = W - 1, abits = aw * 32;
    const ips_u128 all_ones = abits == 128 ? ~(ips_u128)0 : (((ips_u128)1 << abits) - 1);
    const size_t m = t->count;
    prefix_rec *recs = malloc((m ? m : 1) * sizeof *recs);
    boundary *ev = malloc((2 * m + 1) * sizeof *ev);
    prefix_rec *stack = malloc((abits + 2) * sizeof *stack);
    if (!recs || !ev || !stack)
        goto nomem;

    size_t r = 0;
    for (size_t i = 0; i < tbl_phys(t); i++) {
        const uint32_t *s = tbl_slot(t, i);
        if (key_is_zero(s, W))
            continue;
        ips_u128 start = 0;
        for (unsigned w = 0; w < aw; w++)
            start = (start << 32) | s[w];
        unsigned len = (s[aw] & 0xFF) - 1;
        ips_u128 host = len == 0 ? all_ones : ((((ips_u128)1) << (abits - len)) - 1);
        recs[r].start = start;
        recs[r].end = start | host;
        recs[r].len = (uint8_t)len;
        recs[r].verdict = (s[aw] >> 8) & 1 ? 0 : 1;
        r++;
    }
    qsort(recs, r, sizeof *recs, cmp_prefix);

    /* Prefixes nest or are disjoint, so a stack of open prefixes gives, at
     * every boundary, the innermost one covering what follows. */
    size_t ne = 0, sp = 0;
    emit(ev, &ne, 0, 0);
    for (size_t i = 0; i < r; i++) {
        while (sp > 0 && stack[sp - 1].end < recs[i].start) {
            prefix_rec top = stack[--sp];
            emit(ev, &ne, top.end + 1, sp ? stack[sp - 1].verdict : 0);
        }
        emit(ev, &ne, recs[i].start, recs[i].verdict);
        stack[sp++] = recs[i];
    }
    while (sp > 0) {
        prefix_rec top = stack[--sp];
        if (top.end != all_ones)
            emit(ev, &ne, top.end + 1, sp ? stack[sp - 1].verdict : 0);
    }
    /* Drop boundaries that do not change the verdict. */
    size_t n = 1;
    for (size_t i = 1; i < ne; i++)
        if (ev[i].verdict != ev[n - 1].verdict)
            ev[n++] = ev[i];

    ix->n = n;
    ix->verdict = malloc(n);
    if (family == IPS_INET)
        ix->starts4 = malloc(n * sizeof(uint32_t));
    else
        ix->starts6 = malloc(n * sizeof(ips_u128));
    ix->k = ceil_log2(n);
    if (ix->k > 20)
        ix->k = 20;
    ix->bucket = malloc((((size_t)1 << ix->k) + 1) * sizeof(uint32_t));
    if (!ix->verdict || !ix->bucket || (!ix->starts4 && !ix->starts6))
        goto nomem;
    for (size_t i = 0; i < n; i++) {
        ix->verdict[i] = ev[i].verdict;
        if (ix->starts4)
            ix->starts4[i] = (uint32_t)ev[i].pos;
        else
            ix->starts6[i] = ev[i].pos;
    }

    /* bucket[b]: the interval holding the first address of bucket b. The
     * intervals an address of bucket b can fall in are bucket[b]..bucket[b+1]. */
    const size_t nb = (size_t)1 << ix->k;
    size_t cur = 0, widest = 1;
    for (size_t b = 0; b < nb; b++) {
        ips_u128 bstart = ix->k == 0 ? 0 : ((ips_u128)b << (abits - ix->k));
        while (cur + 1 < n && ev[cur + 1].pos <= bstart)
            cur++;
        ix->bucket[b] = (uint32_t)cur;
    }
    ix->bucket[nb] = (uint32_t)(n - 1);
    for (size_t b = 0; b < nb; b++) {
        size_t span = (size_t)ix->bucket[b + 1] - ix->bucket[b] + 1;
        if (span > widest)
            widest = span;
    }
    ix->steps = ceil_log2(widest);

    free(recs);
    free(ev);
    free(stack);
    return IPS_OK;
nomem:
    free(recs);
    free(ev);
    free(stack);
    netindex_free(ix);
    return IPS_ERR_NOMEM;
}

/*
 * Queries advance in lockstep in blocks: each step of each query is an
 * independent load and select, which the CPU overlaps across the block. One
 * body for both families: ADDR_T is the address type, LOAD(i) reads query i.
 */
#define NETINDEX_BLOCK 16
#define NETINDEX_SEARCH(ADDR_T, STARTS, BITS, LOAD)                                             \
    do {                                                                                       \
        const ADDR_T *starts = (STARTS);                                                       \
        const unsigned shift = (BITS) - ix->k, steps = ix->steps;                              \
        for (size_t i0 = 0; i0 < n; i0 += NETINDEX_BLOCK) {                                    \
            size_t cnt = n - i0 < NETINDEX_BLOCK ? n - i0 : NETINDEX_BLOCK;                    \
            uint32_t base[NETINDEX_BLOCK], len[NETINDEX_BLOCK];                                \
            ADDR_T q[NETINDEX_BLOCK];                                                          \
            for (size_t j = 0; j < cnt; j++) {                                                 \
                q[j] = LOAD(i0 + j);                                                           \
                size_t b = ix->k ? (size_t)(q[j] >> shift) : 0;                                \
                base[j] = ix->bucket[b];                                                       \
                len[j] = ix->bucket[b + 1] - base[j] + 1;                                      \
            }                                                                                  \
            for (unsigned s = 0; s < steps; s++) {                                             \
                for (size_t j = 0; j < cnt; j++) {                                             \
                    uint32_t half = len[j] >> 1;                                               \
                    base[j] = starts[base[j] + half] <= q[j] ? base[j] + half : base[j];       \
                    len[j] -= half;                                                            \
                }                                                                              \
            }                                                                                  \
            for (size_t j = 0; j < cnt; j++)                                                   \
                out[i0 + j] = ix->verdict[base[j]];                                            \
        }                                                                                      \
    } while (0)

void netindex_test4(const ips_netindex *ix, size_t n, const uint32_t *addr, uint8_t *out) {
#define LOAD4(i) addr[i]
    NETINDEX_SEARCH(uint32_t, ix->starts4, 32, LOAD4);
#undef LOAD4
}

void netindex_test6(const ips_netindex *ix, size_t n, const uint8_t *addr16, uint8_t *out) {
#define LOAD6(i) ips_load_u128_be(addr16 + (i) * 16)
    NETINDEX_SEARCH(ips_u128, ix->starts6, 128, LOAD6);
#undef LOAD6
}

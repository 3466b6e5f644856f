/*
 * The one hash table behind every set type: open addressing with linear
 * probing over keys of W uint32 words stored inline.
 *
 * - Empty slot: all words zero. The all-zero key (only hash:ip can produce it:
 *   0.0.0.0 or ::) lives in `zero_present` instead of the table.
 * - The last word may carry flag bits outside `last_mask` (hash:net keeps its
 *   nomatch flag there); they take no part in hashing or equality. Keys passed
 *   to lookups have those bits clear.
 * - Load stays within (2/5, 4/5]: grow by doubling above 4/5, shrink by half
 *   below 1/5.
 * - Probing does not wrap around: a key's home is one of the first `cap`
 *   slots and its run may spill into IPS_TAIL extra slots after them. The last
 *   window of the tail is never written, so every run ends in an empty slot
 *   inside the array; an insert that would need it rebuilds under a new seed.
 * - Lookups compare a window of slots at once (8 for hash:ip inet) and derive
 *   "found" and "run ended" as bit masks: a key can only sit between its home
 *   and the first empty slot, and is stored once, so any match in the window
 *   is the answer and no branch depends on hit or miss. Only runs longer than
 *   a window take a second step.
 * - Deletion shifts the rest of the run back (Knuth's Algorithm R), so there
 *   are no tombstones to accumulate.
 * - Hash: a keyed multiply-fold (the 128-bit product of key and seed, high
 *   half xor low half) per 64-bit chunk; the home slot is the top `bits` bits.
 */
#ifndef PYIPSET_TABLE_H
#define PYIPSET_TABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pyipset/ipset_core.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#define IPS_MAX_WORDS 9 /* hash:ip,port,ip inet6: 4 + 1 + 4 */
#define IPS_MIN_CAP 8
#define IPS_TAIL 64 /* slots after the last home slot; at least two windows */

/* Slots compared per lookup step: about 32 bytes of keys. */
#define IPS_WINDOW(W) ((W) == 1 ? 8 : (W) <= 3 ? 4 : 2)

typedef struct ips_table {
    uint32_t *slots; /* (cap + IPS_TAIL) * W words, or NULL when cap == 0 */
    size_t cap;      /* home slots: 0 or a power of two >= IPS_MIN_CAP */
    size_t count;    /* keys in slots (the zero key not included) */
    unsigned bits;   /* log2(cap) */
    unsigned W;      /* words per key */
    uint32_t last_mask;
    bool zero_present;
    uint64_t seed0, seed1;
} ips_table;

#if defined(__GNUC__) || defined(__clang__)
#define IPS_INLINE static inline __attribute__((always_inline))
#define IPS_PREFETCH(p) __builtin_prefetch((p), 0, 1)
#else
#define IPS_INLINE static inline
#define IPS_PREFETCH(p) ((void)(p))
#endif

/* Slots in the array: home slots plus the tail. */
IPS_INLINE size_t tbl_phys(const ips_table *t) { return t->cap ? t->cap + IPS_TAIL : 0; }

IPS_INLINE uint64_t ips_fold_mul(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/* Hash of a key whose last word has its flag bits clear. */
IPS_INLINE uint64_t tbl_hash(const ips_table *t, const uint32_t *k, unsigned W) {
    uint64_t h = t->seed1;
    unsigned i = 0;
    for (; i + 1 < W; i += 2)
        h = ips_fold_mul(((uint64_t)k[i] << 32 | k[i + 1]) ^ t->seed0, h ^ 0x9E3779B97F4A7C15ull);
    if (i < W)
        h = ips_fold_mul((uint64_t)k[i] ^ t->seed0, h ^ 0xD6E8FEB86659FD93ull);
    return h;
}

IPS_INLINE size_t tbl_home(const ips_table *t, const uint32_t *k, unsigned W) {
    return (size_t)(tbl_hash(t, k, W) >> (64 - t->bits));
}

IPS_INLINE bool key_is_zero(const uint32_t *k, unsigned W) {
    uint32_t acc = 0;
    for (unsigned i = 0; i < W; i++)
        acc |= k[i];
    return acc == 0;
}

IPS_INLINE bool slot_matches(const uint32_t *slot, const uint32_t *k, unsigned W, uint32_t last_mask) {
    uint32_t diff = (slot[W - 1] & last_mask) ^ k[W - 1];
    for (unsigned i = 0; i + 1 < W; i++)
        diff |= slot[i] ^ k[i];
    return diff == 0;
}

/* Bit i of the result: slot i of the window holds k; *empty: slot i is empty. */
IPS_INLINE unsigned window_scan(const uint32_t *s, const uint32_t *k, unsigned W, uint32_t last_mask,
                                unsigned *empty) {
    const unsigned K = IPS_WINDOW(W);
    unsigned m = 0, e = 0;
#if defined(__SSE2__)
    if (W == 1) { /* hash:ip inet: 8 slots, two compares each for key and empty */
        const __m128i q = _mm_set1_epi32((int)k[0]), z = _mm_setzero_si128();
        const __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 4));
        m = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(a, q))) |
            (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(b, q))) << 4;
        e = (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(a, z))) |
            (unsigned)_mm_movemask_ps(_mm_castsi128_ps(_mm_cmpeq_epi32(b, z))) << 4;
        *empty = e;
        return m;
    }
#endif
    for (unsigned i = 0; i < K; i++) {
        m |= (unsigned)slot_matches(s + i * W, k, W, last_mask) << i;
        e |= (unsigned)key_is_zero(s + i * W, W) << i;
    }
    *empty = e;
    return m;
}

/* Membership of a non-zero key whose home slot is `home`. */
IPS_INLINE bool tbl_probe(const ips_table *t, const uint32_t *k, unsigned W, size_t home) {
    const unsigned K = IPS_WINDOW(W);
    const uint32_t *s = t->slots + home * W;
    for (;;) {
        unsigned e, m = window_scan(s, k, W, t->last_mask, &e);
        if (m | e)
            return m != 0;
        s += K * W; /* the run is longer than a window: rare */
    }
}

/* Index of the slot holding k, or -1. k must not be the zero key. */
IPS_INLINE ptrdiff_t tbl_find_from(const ips_table *t, const uint32_t *k, unsigned W, size_t i) {
    for (;; i++) {
        const uint32_t *s = t->slots + i * W;
        if (slot_matches(s, k, W, t->last_mask))
            return (ptrdiff_t)i;
        if (key_is_zero(s, W))
            return -1;
    }
}

/* Membership of k (the zero key included). */
IPS_INLINE bool tbl_contains(const ips_table *t, const uint32_t *k, unsigned W) {
    if (key_is_zero(k, W))
        return t->zero_present;
    if (t->cap == 0)
        return false;
    return tbl_probe(t, k, W, tbl_home(t, k, W));
}

/* Slot of k, or NULL. Not for the zero key. */
IPS_INLINE const uint32_t *tbl_lookup(const ips_table *t, const uint32_t *k, unsigned W) {
    if (t->cap == 0)
        return NULL;
    ptrdiff_t i = tbl_find_from(t, k, W, tbl_home(t, k, W));
    return i < 0 ? NULL : t->slots + (size_t)i * W;
}

void tbl_init(ips_table *t, unsigned W, uint32_t last_mask, uint64_t seed);
void tbl_release(ips_table *t);

/* Inserts k, or updates the flag bits of its last word. k carries its flags. */
ips_status tbl_upsert(ips_table *t, const uint32_t *k, bool *added);

/*
 * Inserts a non-zero key with flags clear whose home slot was computed under
 * the current seed, in one pass (find and place together); for bulk loads
 * after tbl_reserve. Returns false, having changed nothing, when the key
 * needs the slow path (a run too long): call tbl_upsert then.
 */
IPS_INLINE bool tbl_insert_fast(ips_table *t, const uint32_t *k, unsigned W, size_t home, bool *added) {
    const size_t limit = t->cap + IPS_TAIL - IPS_WINDOW(W);
    for (size_t i = home; i < limit && i - home <= IPS_PROBE_LIMIT; i++) {
        uint32_t *s = t->slots + i * W;
        if (slot_matches(s, k, W, t->last_mask)) {
            *added = false;
            return true;
        }
        if (key_is_zero(s, W)) {
            for (unsigned w = 0; w < W; w++)
                s[w] = k[w];
            t->count++;
            *added = true;
            return true;
        }
    }
    return false;
}

/* Removes k (flag bits in k are ignored). */
ips_status tbl_remove(ips_table *t, const uint32_t *k, bool *removed);

/* Makes room for `extra` more keys without growing later. */
ips_status tbl_reserve(ips_table *t, size_t extra);

size_t tbl_size(const ips_table *t);
size_t tbl_memory(const ips_table *t);

/* Writes fresh random seeds (from the OS, or derived from `seed` if nonzero). */
void tbl_seed(ips_table *t, uint64_t seed);

#endif

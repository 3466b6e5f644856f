/*
 * The one hash table behind every set type: open addressing with linear
 * probing over keys of W uint32 words stored inline.
 *
 * - Empty slot: all words zero. The all-zero key (only hash:ip can produce it:
 *   0.0.0.0 or ::) lives in `zero_present` instead of the table.
 * - The last word may carry flag bits outside `last_mask` (hash:net keeps its
 *   nomatch flag there); they take no part in hashing or equality. Keys passed
 *   to lookups have those bits clear.
 * - Any capacity (a multiple of 8, and of a line's slots when bucketed), not
 *   only powers of two, so the load can stay in a narrow band whatever the
 *   size: a build or a growth leaves it at 5/12, growth comes above 5/8 (by
 *   1.5x; bucketed tables above 1/2, by 1.2x), shrinking below 1/5. With
 *   powers of two it swung between 2/5 and 4/5 as the table doubled, and
 *   lookups followed it (3.5 ns at 10k members, 8-9 ns from 50k to 400k):
 *   past ~2/3 runs outgrow a window and misses take a second, mispredicted
 *   step.
 * - Probing does not wrap around: a key's home is one of the first `cap`
 *   slots and its run may spill into IPS_TAIL extra slots after them. The last
 *   window of the tail is never written, so every run ends in an empty slot
 *   inside the array; an insert that would need it rebuilds under a new seed.
 * - Lookups look at a window of slots at once and derive "found" and "run
 *   ended" as bit masks. A key can only sit between its home and the first
 *   empty slot and is stored once, so no branch depends on hit or miss; only
 *   runs longer than a window take a second step.
 *     W = 1 (hash:ip inet): 8 keys compared directly, 4 per SSE2 compare.
 *     W = 2: 4 keys compared word by word.
 *     W = 3, 4, 5 (bucketed): slots are packed into 64-byte lines, as many
 *       as fit (5, 4, 3; the line's spare words stay zero), the array is
 *       line-aligned and a key's home is the first slot of a line. A lookup
 *       reads its home line and compares all of it (for W = 3 and 4 in four
 *       SSE2 compares). One cache line per lookup: once the table outgrows
 *       the cache (a 1M-member hash:ip,port,ip is 31 MB) each lookup is one
 *       DRAM read, not two. It goes on to the next line only if its key may
 *       lie beyond: W = 4 when the line is full, W = 3 and 5 when the line's
 *       spare word (its passing count, see tbl_count_passing) is not 0.
 *     W = 9 (hash:ip,port,ip inet6, 36 bytes): too wide to pack usefully, so
 *       each slot also has a one-byte tag (8 hash bits, never 0; 0 marks an
 *       empty slot) in a parallel array. 16 tags are compared at once and
 *       only the candidate slot's key is read.
 *   Slot indices are logical everywhere (homes, runs, deletion); only
 *   tbl_slot() knows where a slot lives in memory.
 * - Deletion shifts the rest of the run back (Knuth's Algorithm R), so there
 *   are no tombstones to accumulate.
 * - Hash: a keyed multiply-fold (the 128-bit product of key and seed, high
 *   half xor low half) per 64-bit chunk; the home slot is the top 32 bits
 *   scaled to the capacity (multiply and shift, no division), the tag is
 *   bits 8-15.
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
#define IPS_MAX_CAP ((size_t)1 << 32) /* hash_home scales 32 hash bits */
#define IPS_TAIL 64 /* slots after the last home slot; at least two windows */
#define IPS_LINE_WORDS 16 /* a 64-byte cache line */

#define IPS_BUCKETED(W) ((W) >= 3 && (W) <= 5)
#define IPS_PER_LINE(W) (IPS_LINE_WORDS / (W)) /* slots in a line when bucketed */
/* Bucketed lines with a spare last word (W = 3, 5) keep a passing count there. */
#define IPS_COUNTED(W) (IPS_BUCKETED(W) && IPS_PER_LINE(W) * (W) < IPS_LINE_WORDS)
#define IPS_TAGGED(W) ((W) > 5)
/* Slots looked at per lookup step. */
#define IPS_WINDOW(W) ((W) == 1 ? 8 : (W) == 2 ? 4 : IPS_BUCKETED(W) ? IPS_PER_LINE(W) : 16)
/* Slots after the last home slot: whole lines when bucketed. */
#define IPS_TAIL_OF(W) (IPS_BUCKETED(W) ? IPS_TAIL / IPS_PER_LINE(W) * IPS_PER_LINE(W) : IPS_TAIL)

typedef struct ips_table {
    uint32_t *slots; /* the slots of tbl_phys() (see tbl_slot), or NULL when cap == 0 */
    void *block;     /* the allocation slots lies in (lines are aligned inside it) */
    uint8_t *tags;   /* IPS_TAGGED(W): one tag per slot, 0 = empty; else NULL */
    size_t cap;      /* slots up to the last home: 0 or a multiple of 8 (and of the line's slots) */
    size_t homes;    /* home positions: cap, or cap lines when bucketed */
    size_t home_step; /* slots between two homes: 1, or a line's slots */
    size_t count;    /* keys in slots (the zero key not included) */
    unsigned W;      /* words per key */
    uint32_t last_mask;
    bool zero_present;
    uint64_t seed0, seed1;
} ips_table;

#if defined(__GNUC__) || defined(__clang__)
#define IPS_INLINE static inline __attribute__((always_inline))
#define IPS_PREFETCH(p) __builtin_prefetch((p), 0, 3)
#else
#define IPS_INLINE static inline
#define IPS_PREFETCH(p) ((void)(p))
#endif

/* Slots in the array: home slots plus the tail. */
IPS_INLINE size_t tbl_phys(const ips_table *t) { return t->cap ? t->cap + IPS_TAIL_OF(t->W) : 0; }

/* The line of slot i in a bucketed table: a division by a constant in each
 * case (a multiply), also where W is only known at run time. */
IPS_INLINE size_t tbl_line_of(unsigned W, size_t i) {
    switch (W) {
    case 3: return i / IPS_PER_LINE(3);
    case 4: return i / IPS_PER_LINE(4);
    case 5: return i / IPS_PER_LINE(5);
    default: return i;
    }
}

/* Where slot i lives (W: the table's, a constant in the hot paths). Not
 * const-correct on purpose: one accessor for both. */
IPS_INLINE uint32_t *tbl_slot_w(const ips_table *t, size_t i, unsigned W) {
    if (IPS_BUCKETED(W)) {
        const size_t line = tbl_line_of(W, i);
        return t->slots + line * IPS_LINE_WORDS + (i - line * IPS_PER_LINE(W)) * W;
    }
    return t->slots + i * W;
}

IPS_INLINE uint32_t *tbl_slot(const ips_table *t, size_t i) { return tbl_slot_w(t, i, t->W); }

IPS_INLINE uint64_t ips_fold_mul(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

/*
 * Hash of a key whose last word has its flag bits clear: one multiply of two
 * seeded 64-bit halves per 128 bits of key (seed1 has its top bit set, so a
 * short half is never cancelled). Wider keys hash each 128-bit piece under a
 * position-dependent seed, independently (the multiplies overlap), then mix
 * the pieces once more.
 */
IPS_INLINE uint64_t key_chunk(const uint32_t *k, unsigned W, unsigned i) {
    return (i < W ? (uint64_t)k[i] << 32 : 0) | (i + 1 < W ? k[i + 1] : 0);
}

IPS_INLINE uint64_t tbl_hash(const ips_table *t, const uint32_t *k, unsigned W) {
    if (W == 1)
        return ips_fold_mul((uint64_t)k[0] ^ t->seed0, t->seed1);
    if (W == 2)
        return ips_fold_mul(key_chunk(k, W, 0) ^ t->seed0, t->seed1);
    if (W == 3)
        return ips_fold_mul(key_chunk(k, W, 0) ^ t->seed0, (uint64_t)k[2] ^ t->seed1);
    if (W == 4)
        return ips_fold_mul(key_chunk(k, W, 0) ^ t->seed0, key_chunk(k, W, 2) ^ t->seed1);
    uint64_t acc = 0;
    for (unsigned i = 0; i < W; i += 4)
        acc ^= ips_fold_mul(key_chunk(k, W, i) ^ t->seed0 ^ (i * 0x9E3779B97F4A7C15ull),
                            key_chunk(k, W, i + 2) ^ t->seed1);
    return ips_fold_mul(acc ^ t->seed0, t->seed1 ^ W);
}

IPS_INLINE size_t hash_home(const ips_table *t, uint64_t h) {
    return (size_t)(((h >> 32) * (uint64_t)t->homes) >> 32) * t->home_step;
}

/* Where a lookup of hash h starts reading: its home slot, or home line when
 * bucketed (computed directly: no division by the slots in a line). */
IPS_INLINE const uint32_t *tbl_home_ptr(const ips_table *t, uint64_t h, unsigned W) {
    const size_t pos = (size_t)(((h >> 32) * (uint64_t)t->homes) >> 32);
    return t->slots + pos * (IPS_BUCKETED(W) ? IPS_LINE_WORDS : W);
}

/* Keys a table of cap slots holds before it grows: load 5/8, or 1/2 when
 * bucketed (homes at line starts spill more: at 5/8, 14% of lookups read a
 * second line, against 3% at 1/2 with passing counts). */
IPS_INLINE size_t tbl_max_count(size_t cap, unsigned W) { return IPS_BUCKETED(W) ? cap / 2 : cap / 8 * 5; }

/*
 * Passing counts (IPS_COUNTED tables): the spare word of line L counts the
 * keys whose home line is L or before and that are stored after L. A lookup
 * that does not find its key in line L stops there when the count is 0,
 * whether or not the line is full: a key stored further on would have
 * counted itself in L. Kept exact by every store, removal and shift.
 */
IPS_INLINE void tbl_count_passing_w(ips_table *t, size_t home, size_t at, uint32_t delta, unsigned W) {
    if (!IPS_COUNTED(W))
        return;
    for (size_t line = tbl_line_of(W, home), last = tbl_line_of(W, at); line < last; line++)
        t->slots[line * IPS_LINE_WORDS + IPS_LINE_WORDS - 1] += delta;
}

IPS_INLINE void tbl_count_passing(ips_table *t, size_t home, size_t at, uint32_t delta) {
    tbl_count_passing_w(t, home, at, delta, t->W);
}

IPS_INLINE uint8_t hash_tag(uint64_t h) {
    uint8_t tag = (uint8_t)(h >> 8);
    return tag ? tag : 1;
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

/* Slot by slot over the K slots from s: bit i of the result says slot i
 * holds k, bit i of *empty that it is empty. */
IPS_INLINE unsigned slots_scan(const uint32_t *s, const uint32_t *k, unsigned W, uint32_t last_mask, unsigned K,
                               unsigned *empty) {
    unsigned m = 0, e = 0;
    for (unsigned i = 0; i < K; i++) {
        m |= (unsigned)slot_matches(s + i * W, k, W, last_mask) << i;
        e |= (unsigned)key_is_zero(s + i * W, W) << i;
    }
    *empty = e;
    return m;
}

/*
 * Untagged tables: the result is non-zero if a slot of the window holds k;
 * *end is non-zero if k cannot lie past the window: a slot in it is empty,
 * or (counted lines) no key passes the line.
 */
IPS_INLINE unsigned window_scan(const uint32_t *s, const uint32_t *k, unsigned W, uint32_t last_mask,
                                unsigned *end) {
#if defined(__SSE2__)
    if (W == 1) {
        /* Four compares narrowed into one byte mask: matches in bits 0-7,
         * empty slots in bits 8-15 (saturating packs keep 0 and -1). */
        const __m128i q = _mm_set1_epi32((int)k[0]), z = _mm_setzero_si128();
        const __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 4));
        const __m128i hits = _mm_packs_epi32(_mm_cmpeq_epi32(a, q), _mm_cmpeq_epi32(b, q));
        const __m128i holes = _mm_packs_epi32(_mm_cmpeq_epi32(a, z), _mm_cmpeq_epi32(b, z));
        unsigned both = (unsigned)_mm_movemask_epi8(_mm_packs_epi16(hits, holes));
        *end = both >> 8;
        return both & 0xFFu;
    }
    if ((W == 3 || W == 4) && last_mask == 0xFFFFFFFFu) {
        /* A whole line in four compares against the key's words repeated to
         * line up with each slot's (W = 3: word 15 is the passing count),
         * narrowed to one bit per word: bit j of eq says word j of the line
         * equals the key's word there. A slot matches when all its words do
         * (bits at each slot's first word). W = 4 has no spare word, so its
         * run ends at an empty slot, found the same way. */
        const __m128i *line = (const __m128i *)s;
        __m128i q0, q1, q2, q3;
        if (W == 3) {
            const __m128i kv = _mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)k), _mm_cvtsi32_si128((int)k[2]));
            q0 = q3 = _mm_shuffle_epi32(kv, _MM_SHUFFLE(0, 2, 1, 0)); /* k0 k1 k2 k0 */
            q1 = _mm_shuffle_epi32(kv, _MM_SHUFFLE(1, 0, 2, 1));      /* k1 k2 k0 k1 */
            q2 = _mm_shuffle_epi32(kv, _MM_SHUFFLE(2, 1, 0, 2));      /* k2 k0 k1 k2 */
        } else {
            q0 = q1 = q2 = q3 = _mm_loadu_si128((const __m128i *)k);
        }
        const __m128i l0 = _mm_load_si128(line), l1 = _mm_load_si128(line + 1);
        const __m128i l2 = _mm_load_si128(line + 2), l3 = _mm_load_si128(line + 3);
        unsigned eq = (unsigned)_mm_movemask_epi8(
            _mm_packs_epi16(_mm_packs_epi32(_mm_cmpeq_epi32(l0, q0), _mm_cmpeq_epi32(l1, q1)),
                            _mm_packs_epi32(_mm_cmpeq_epi32(l2, q2), _mm_cmpeq_epi32(l3, q3))));
        if (W == 3) {
            *end = s[IPS_LINE_WORDS - 1] == 0;
            return eq & eq >> 1 & eq >> 2 & 0x1249u;
        }
        const __m128i z = _mm_setzero_si128();
        unsigned zero = (unsigned)_mm_movemask_epi8(
            _mm_packs_epi16(_mm_packs_epi32(_mm_cmpeq_epi32(l0, z), _mm_cmpeq_epi32(l1, z)),
                            _mm_packs_epi32(_mm_cmpeq_epi32(l2, z), _mm_cmpeq_epi32(l3, z))));
        *end = zero & zero >> 1 & zero >> 2 & zero >> 3 & 0x1111u;
        return eq & eq >> 1 & eq >> 2 & eq >> 3 & 0x1111u;
    }
#endif
    unsigned e, m = slots_scan(s, k, W, last_mask, IPS_WINDOW(W), &e);
    *end = IPS_COUNTED(W) ? s[IPS_LINE_WORDS - 1] == 0 : e;
    return m;
}

/* Tagged tables: 16 tags from tg; bit i of the result: tag i equals `tag`. */
IPS_INLINE unsigned tag_scan(const uint8_t *tg, uint8_t tag, unsigned *empty) {
#if defined(__SSE2__)
    const __m128i v = _mm_loadu_si128((const __m128i *)tg);
    *empty = (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()));
    return (unsigned)_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8((char)tag)));
#else
    unsigned m = 0, e = 0;
    for (unsigned i = 0; i < 16; i++) {
        m |= (unsigned)(tg[i] == tag) << i;
        e |= (unsigned)(tg[i] == 0) << i;
    }
    *empty = e;
    return m;
#endif
}

/* Index of the slot holding k, or -1. k must not be the zero key. */
IPS_INLINE ptrdiff_t tbl_find_from(const ips_table *t, const uint32_t *k, unsigned W, size_t i) {
    for (;; i++) {
        const uint32_t *s = tbl_slot(t, i);
        if (slot_matches(s, k, W, t->last_mask))
            return (ptrdiff_t)i;
        if (key_is_zero(s, W))
            return -1;
    }
}

/* Membership of a non-zero key with hash h (table not empty). */
IPS_INLINE bool tbl_probe(const ips_table *t, const uint32_t *k, unsigned W, uint64_t h) {
    const size_t home = hash_home(t, h);
    if (IPS_TAGGED(W)) {
        unsigned e, m = tag_scan(t->tags + home, hash_tag(h), &e);
        unsigned cand = m & ((e & -e) - 1); /* tags before the first empty slot */
        if (e && (cand & (cand - 1)) == 0) {
            /* One candidate at most (almost always): check its key, or slot
             * home+16 (inside the tail) when there is none, and combine
             * without a branch. */
            unsigned c = (unsigned)__builtin_ctz(cand | 1u << 16);
            return (cand != 0) & slot_matches(tbl_slot(t, home + c), k, W, t->last_mask);
        }
        return tbl_find_from(t, k, W, home) >= 0;
    }
    /* Bucketed: the home line, then (a full line: rare) the next. */
    const size_t step = IPS_BUCKETED(W) ? IPS_LINE_WORDS : IPS_WINDOW(W) * W;
    const uint32_t *s = tbl_home_ptr(t, h, W);
    for (;;) {
        unsigned e, m = window_scan(s, k, W, t->last_mask, &e);
        if (m | e)
            return m != 0;
        s += step; /* the run is longer than a window: rare */
    }
}

/* Index of the slot holding non-zero k (hash h), or -1; hash:ip inet tables
 * a window of 8 slots at a time, like tbl_probe. */
IPS_INLINE ptrdiff_t tbl_find(const ips_table *t, const uint32_t *k, unsigned W, uint64_t h) {
    size_t i = hash_home(t, h);
    if (W != 1)
        return tbl_find_from(t, k, W, i);
    for (;; i += IPS_WINDOW(1)) {
        unsigned e, m = window_scan(t->slots + i, k, 1, t->last_mask, &e);
        if (m) /* stored once, before its run's first empty slot */
            return (ptrdiff_t)(i + (unsigned)__builtin_ctz(m));
        if (e)
            return -1;
    }
}

/* Membership of k (the zero key included). */
IPS_INLINE bool tbl_contains(const ips_table *t, const uint32_t *k, unsigned W) {
    if (key_is_zero(k, W))
        return t->zero_present;
    if (t->cap == 0)
        return false;
    return tbl_probe(t, k, W, tbl_hash(t, k, W));
}

/* Slot of k, or NULL. Not for the zero key. */
IPS_INLINE const uint32_t *tbl_lookup(const ips_table *t, const uint32_t *k, unsigned W) {
    if (t->cap == 0)
        return NULL;
    ptrdiff_t i = tbl_find_from(t, k, W, hash_home(t, tbl_hash(t, k, W)));
    return i < 0 ? NULL : tbl_slot(t, (size_t)i);
}

/* Writes key words (and the tag) into empty slot i, for a key of hash h. */
IPS_INLINE void slot_store_w(ips_table *t, size_t i, const uint32_t *words, uint64_t h, unsigned W) {
    uint32_t *s = tbl_slot_w(t, i, W);
    for (unsigned w = 0; w < W; w++)
        s[w] = words[w];
    if (IPS_TAGGED(W))
        t->tags[i] = hash_tag(h);
    tbl_count_passing_w(t, hash_home(t, h), i, 1, W);
}

IPS_INLINE void slot_store(ips_table *t, size_t i, const uint32_t *words, uint64_t h) {
    slot_store_w(t, i, words, h, t->W);
}

void tbl_init(ips_table *t, unsigned W, uint32_t last_mask, uint64_t seed);
void tbl_release(ips_table *t);

/* Inserts k, or updates the flag bits of its last word. k carries its flags. */
ips_status tbl_upsert(ips_table *t, const uint32_t *k, bool *added);

/*
 * Inserts a non-zero key with flags clear and hash h computed under the
 * current seed, in one pass (find and place together); for bulk loads after
 * tbl_reserve. Returns false, having changed nothing, when the key needs the
 * slow path (a run too long): call tbl_upsert then.
 */
IPS_INLINE bool tbl_insert_fast(ips_table *t, const uint32_t *k, unsigned W, uint64_t h, bool *added) {
    const size_t home = hash_home(t, h);
    const size_t limit = t->cap + IPS_TAIL_OF(W) - IPS_WINDOW(W);
    const uint8_t tag = hash_tag(h);
    if (IPS_BUCKETED(W)) { /* a line at a time: found anywhere in it, or its first empty slot */
        const unsigned per = IPS_PER_LINE(W);
        const uint32_t *s = tbl_home_ptr(t, h, W);
        for (size_t i = home; i < limit && i - home <= IPS_PROBE_LIMIT; i += per, s += IPS_LINE_WORDS) {
            unsigned empty, found = slots_scan(s, k, W, t->last_mask, per, &empty);
            if (found) {
                *added = false;
                return true;
            }
            if (empty) {
                slot_store_w(t, i + (unsigned)__builtin_ctz(empty), k, h, W);
                t->count++;
                *added = true;
                return true;
            }
        }
        return false;
    }
    for (size_t i = home; i < limit && i - home <= IPS_PROBE_LIMIT; i++) {
        uint32_t *s = tbl_slot_w(t, i, W);
        if (IPS_TAGGED(W)) { /* compare the tag first: wide keys are costly */
            if (t->tags[i] == 0) {
                slot_store_w(t, i, k, h, W);
                t->count++;
                *added = true;
                return true;
            }
            if (t->tags[i] == tag && slot_matches(s, k, W, t->last_mask)) {
                *added = false;
                return true;
            }
            continue;
        }
        if (slot_matches(s, k, W, t->last_mask)) {
            *added = false;
            return true;
        }
        if (key_is_zero(s, W)) {
            slot_store_w(t, i, k, h, W);
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
/* Capacities of a table of W-word keys are multiples of this (8 or more). */
size_t tbl_cap_unit(unsigned W);
size_t tbl_max_probe(const ips_table *t);
size_t tbl_memory(const ips_table *t);

/* Writes fresh random seeds (from the OS, or derived from `seed` if nonzero). */
void tbl_seed(ips_table *t, uint64_t seed);

#endif

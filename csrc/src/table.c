#include "table.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void tbl_seed(ips_table *t, uint64_t seed) {
    uint64_t state = seed;
    if (seed == 0) {
        uint64_t buf[1];
        if (getrandom(buf, sizeof buf, GRND_NONBLOCK) == (ssize_t)sizeof buf) {
            state = buf[0];
        } else {
            /* No entropy yet (early boot): still unpredictable enough to an
             * outside sender, and the probe limit backs it up. */
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            state = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 32) ^ (uint64_t)(uintptr_t)t;
        }
    }
    t->seed0 = splitmix64(&state);
    t->seed1 = splitmix64(&state) | 1u | 1ull << 63; /* odd, and never cancelled by a 32-bit half */
}

void tbl_init(ips_table *t, unsigned W, uint32_t last_mask, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->W = W;
    t->last_mask = last_mask;
    tbl_seed(t, seed);
}

static void free_arrays(ips_table *t) {
    free(t->block);
    t->block = NULL;
    free(t->tags);
    t->slots = NULL;
    t->tags = NULL;
}

void tbl_release(ips_table *t) {
    free_arrays(t);
    t->cap = 0;
    t->count = 0;
    t->zero_present = false;
}

size_t tbl_size(const ips_table *t) { return t->count + (t->zero_present ? 1 : 0); }

/* uint32 words behind phys slots: whole lines when bucketed. */
static size_t words_for(unsigned W, size_t phys) {
    return IPS_BUCKETED(W) ? phys / IPS_PER_LINE(W) * IPS_LINE_WORDS : phys * W;
}

size_t tbl_memory(const ips_table *t) {
    return words_for(t->W, tbl_phys(t)) * sizeof(uint32_t) + (t->tags ? tbl_phys(t) : 0);
}

/* Hash of a stored slot (its flag bits cleared first). */
static uint64_t slot_hash(const ips_table *t, const uint32_t *slot) {
    uint32_t k[IPS_MAX_WORDS];
    memcpy(k, slot, t->W * sizeof(uint32_t));
    k[t->W - 1] &= t->last_mask;
    return tbl_hash(t, k, t->W);
}

size_t tbl_max_probe(const ips_table *t) {
    size_t worst = 0;
    for (size_t i = 0; i < tbl_phys(t); i++) {
        const uint32_t *s = tbl_slot(t, i);
        if (!key_is_zero(s, t->W)) {
            size_t d = i - hash_home(t, slot_hash(t, s));
            worst = d > worst ? d : worst;
        }
    }
    return worst;
}

/*
 * Places a key known to be absent. Returns false, placing nothing, when its
 * run would pass the probe limit or reach the last window of the tail: the
 * table then needs a rebuild under another seed.
 */
static bool place(ips_table *t, const uint32_t *slot_words) {
    const unsigned W = t->W;
    const size_t limit = t->cap + IPS_TAIL_OF(W) - IPS_WINDOW(W);
    uint64_t h = slot_hash(t, slot_words);
    size_t home = hash_home(t, h), i = home;
    while (!key_is_zero(tbl_slot(t, i), W)) {
        i++;
        if (i >= limit || i - home > IPS_PROBE_LIMIT)
            return false;
    }
    slot_store(t, i, slot_words, h);
    return true;
}

/* Gives t empty arrays for cap slots; false if allocation fails. */
static bool alloc_arrays(ips_table *t, size_t cap) {
    const unsigned W = t->W;
    const size_t phys = cap + IPS_TAIL_OF(W);
    if (cap > IPS_MAX_CAP || cap > SIZE_MAX / 8 / (IPS_LINE_WORDS * sizeof(uint32_t)))
        return false;
    /* Lines must be cache lines: 64 bytes more, aligned up. Bucketed tables
     * are also written through once, in order: their pages then tend to be
     * physically contiguous, which the TLB can coalesce (a 31 MB table,
     * random lookups: 8.1 ns left as fresh zero pages faulted in at random,
     * 7.6 written through; the build is no slower). */
    const size_t bytes = words_for(W, phys) * sizeof(uint32_t), pad = IPS_BUCKETED(W) ? 64 : 0;
    t->block = pad ? malloc(bytes + pad) : calloc(bytes, 1);
    if (t->block && pad)
        memset(t->block, 0, bytes + pad);
    t->slots = t->block ? (uint32_t *)(((uintptr_t)t->block + pad) & ~(uintptr_t)(pad ? pad - 1 : 0)) : NULL;
    t->tags = IPS_TAGGED(W) ? calloc(phys, 1) : NULL;
    if (!t->slots || (IPS_TAGGED(W) && !t->tags)) {
        free_arrays(t);
        return false;
    }
    t->cap = cap;
    t->home_step = IPS_BUCKETED(W) ? IPS_PER_LINE(W) : 1;
    t->homes = cap / t->home_step;
    return true;
}

/* Capacities are multiples of this: 8, and of the slots in a line. */
size_t tbl_cap_unit(unsigned W) {
    const size_t per = IPS_BUCKETED(W) ? IPS_PER_LINE(W) : 1;
    size_t a = 8, b = per;
    while (b) { /* gcd(8, per) */
        size_t r = a % b;
        a = b;
        b = r;
    }
    return 8 * per / a;
}

static size_t max_cap(unsigned W) { return IPS_MAX_CAP / tbl_cap_unit(W) * tbl_cap_unit(W); }

/*
 * Moves every key into a table of new_cap home slots, under a fresh seed when
 * reseed is set. If the keys cluster too much under the old seed, fresh seeds
 * are tried; if even those fail, the room is doubled. On allocation failure
 * the table is left exactly as it was.
 */
static ips_status rebuild(ips_table *t, size_t new_cap, bool reseed) {
    const ips_table old = *t;
    if (new_cap == 0) {
        free_arrays(t);
        t->cap = 0;
        return IPS_OK;
    }
    for (unsigned attempt = 0;; attempt++) {
        if (!alloc_arrays(t, new_cap)) {
            *t = old;
            return IPS_ERR_NOMEM;
        }
        if (reseed)
            tbl_seed(t, 0);
        bool placed_all = true;
        const size_t old_phys = tbl_phys(&old);
        for (size_t i = 0; i < old_phys && placed_all; i++) {
            const uint32_t *s = tbl_slot(&old, i);
            if (!key_is_zero(s, old.W))
                placed_all = place(t, s);
        }
        if (placed_all) {
            free(old.block);
            free(old.tags);
            return IPS_OK;
        }
        free_arrays(t);
        if (reseed && attempt >= 2) /* fresh seeds keep clustering: more room */
            new_cap = new_cap * 2 > max_cap(t->W) ? max_cap(t->W) : new_cap * 2;
        reseed = true;
    }
}

/* The capacity for n keys at load 5/12, or 0 if too large. */
static size_t cap_for(size_t n, unsigned W) {
    const size_t unit = tbl_cap_unit(W);
    if (n > max_cap(W) / 12 * 5)
        return 0;
    return (n * 12 / 5 + unit) / unit * unit; /* at least one unit */
}

ips_status tbl_reserve(ips_table *t, size_t extra) {
    size_t want = t->count + extra;
    if (want < t->count)
        return IPS_ERR_NOMEM;
    if (t->cap != 0 && want <= tbl_max_count(t->cap, t->W))
        return IPS_OK;
    size_t cap = cap_for(want, t->W);
    return cap ? rebuild(t, cap, false) : IPS_ERR_NOMEM;
}

ips_status tbl_upsert(ips_table *t, const uint32_t *k, bool *added) {
    const unsigned W = t->W;
    uint32_t key[IPS_MAX_WORDS];
    memcpy(key, k, W * sizeof(uint32_t));
    key[W - 1] &= t->last_mask;
    if (key_is_zero(k, W)) {
        if (added)
            *added = !t->zero_present;
        t->zero_present = true;
        return IPS_OK;
    }
    if (t->cap != 0) {
        ptrdiff_t i = tbl_find_from(t, key, W, hash_home(t, tbl_hash(t, key, W)));
        if (i >= 0) {
            tbl_slot(t, (size_t)i)[W - 1] = k[W - 1]; /* new flag bits */
            if (added)
                *added = false;
            return IPS_OK;
        }
    }
    ips_status st = tbl_reserve(t, 1);
    if (st != IPS_OK)
        return st;
    while (!place(t, k)) {
        /* The run is too long under this seed: break it up and retry. */
        st = rebuild(t, t->cap, true);
        if (st != IPS_OK)
            return st;
    }
    t->count++;
    if (added)
        *added = true;
    return IPS_OK;
}

ips_status tbl_remove(ips_table *t, const uint32_t *k, bool *removed) {
    const unsigned W = t->W;
    uint32_t key[IPS_MAX_WORDS];
    memcpy(key, k, W * sizeof(uint32_t));
    key[W - 1] &= t->last_mask;
    if (removed)
        *removed = false;
    if (key_is_zero(key, W)) {
        if (removed)
            *removed = t->zero_present;
        t->zero_present = false;
        return IPS_OK;
    }
    if (t->cap == 0)
        return IPS_OK;
    const size_t home = hash_home(t, tbl_hash(t, key, W));
    ptrdiff_t found = tbl_find_from(t, key, W, home);
    if (found < 0)
        return IPS_OK;
    size_t hole = (size_t)found, j = hole;
    tbl_count_passing(t, home, hole, (uint32_t)-1);
    for (;;) {
        j++;
        uint32_t *s = tbl_slot(t, j);
        if (key_is_zero(s, W))
            break;
        /* The key at j may fill the hole unless its home lies after the hole;
         * moved back, it no longer passes the lines from the hole's to j's. */
        if (hash_home(t, slot_hash(t, s)) <= hole) {
            tbl_count_passing(t, hole, j, (uint32_t)-1);
            memcpy(tbl_slot(t, hole), s, W * sizeof(uint32_t));
            if (t->tags)
                t->tags[hole] = t->tags[j];
            hole = j;
        }
    }
    memset(tbl_slot(t, hole), 0, W * sizeof(uint32_t));
    if (t->tags)
        t->tags[hole] = 0;
    t->count--;
    if (removed)
        *removed = true;
    if (t->count == 0) {
        rebuild(t, 0, false);
    } else if (t->cap > tbl_cap_unit(W) && t->count < t->cap / 5) {
        /* Shrinking is an optimisation: on failure the table stays valid. */
        (void)rebuild(t, cap_for(t->count, W), false);
    }
    return IPS_OK;
}

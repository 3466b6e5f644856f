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
    t->seed1 = splitmix64(&state) | 1u;
}

void tbl_init(ips_table *t, unsigned W, uint32_t last_mask, uint64_t seed) {
    memset(t, 0, sizeof *t);
    t->W = W;
    t->last_mask = last_mask;
    tbl_seed(t, seed);
}

void tbl_release(ips_table *t) {
    free(t->slots);
    t->slots = NULL;
    t->cap = 0;
    t->bits = 0;
    t->count = 0;
    t->zero_present = false;
}

size_t tbl_size(const ips_table *t) { return t->count + (t->zero_present ? 1 : 0); }

static size_t phys_slots(size_t cap) { return cap ? cap + IPS_TAIL : 0; }

size_t tbl_memory(const ips_table *t) { return tbl_phys(t) * t->W * sizeof(uint32_t); }

static size_t slot_home(const ips_table *t, const uint32_t *slot) {
    uint32_t k[IPS_MAX_WORDS];
    memcpy(k, slot, t->W * sizeof(uint32_t));
    k[t->W - 1] &= t->last_mask;
    return tbl_home(t, k, t->W);
}

/*
 * Places a key known to be absent. Returns false, placing nothing, when its
 * run would pass the probe limit or reach the last window of the tail: the
 * table then needs a rebuild under another seed.
 */
static bool place(ips_table *t, const uint32_t *slot_words) {
    const unsigned W = t->W;
    const size_t limit = t->cap + IPS_TAIL - IPS_WINDOW(W);
    size_t home = slot_home(t, slot_words), i = home;
    while (!key_is_zero(t->slots + i * W, W)) {
        i++;
        if (i >= limit || i - home > IPS_PROBE_LIMIT)
            return false;
    }
    memcpy(t->slots + i * W, slot_words, W * sizeof(uint32_t));
    return true;
}

/*
 * Moves every key into a table of new_cap slots, under a fresh seed when
 * reseed is set. On allocation failure the table is left as it was.
 */
static ips_status rebuild(ips_table *t, size_t new_cap, bool reseed) {
    const unsigned W = t->W;
    if (new_cap == 0) {
        free(t->slots);
        t->slots = NULL;
        t->cap = 0;
        t->bits = 0;
        return IPS_OK;
    }
    if (new_cap > SIZE_MAX / 4 / (W * sizeof(uint32_t)))
        return IPS_ERR_NOMEM;
    uint32_t *fresh = calloc(phys_slots(new_cap) * W, sizeof(uint32_t));
    if (!fresh)
        return IPS_ERR_NOMEM;
    uint32_t *old = t->slots;
    size_t old_cap = t->cap;
    uint64_t old_seed0 = t->seed0, old_seed1 = t->seed1;
    unsigned old_bits = t->bits;
    for (;;) {
        t->slots = fresh;
        t->cap = new_cap;
        t->bits = (unsigned)__builtin_ctzll((unsigned long long)new_cap);
        if (reseed)
            tbl_seed(t, 0);
        bool too_long = false;
        for (size_t i = 0; i < phys_slots(old_cap) && !too_long; i++) {
            const uint32_t *s = old + i * W;
            if (!key_is_zero(s, W))
                too_long = !place(t, s);
        }
        if (!too_long)
            break;
        if (!reseed) {
            /* The old seed clusters these keys: try fresh ones. */
            reseed = true;
        } else if (new_cap < SIZE_MAX / 8 / (W * sizeof(uint32_t))) {
            /* Even fresh seeds cluster: the probe limit is too tight for
             * this load. Spread the keys over twice the room. */
            uint32_t *bigger = calloc(phys_slots(new_cap * 2) * W, sizeof(uint32_t));
            if (!bigger)
                goto fail;
            free(fresh);
            fresh = bigger;
            new_cap *= 2;
            continue;
        } else {
            goto fail;
        }
        memset(fresh, 0, phys_slots(new_cap) * W * sizeof(uint32_t));
    }
    free(old);
    return IPS_OK;
fail:
    free(fresh);
    t->slots = old;
    t->cap = old_cap;
    t->bits = old_bits;
    t->seed0 = old_seed0;
    t->seed1 = old_seed1;
    return IPS_ERR_NOMEM;
}

/* Smallest capacity that holds n keys at load <= 4/5. */
static size_t cap_for(size_t n) {
    size_t cap = IPS_MIN_CAP;
    while (cap / 5 * 4 < n && cap < (SIZE_MAX >> 2))
        cap <<= 1;
    return cap;
}

ips_status tbl_reserve(ips_table *t, size_t extra) {
    size_t want = t->count + extra;
    if (want < t->count)
        return IPS_ERR_NOMEM;
    if (t->cap != 0 && want <= t->cap / 5 * 4)
        return IPS_OK;
    return rebuild(t, cap_for(want), false);
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
        ptrdiff_t i = tbl_find_from(t, key, W, tbl_home(t, key, W));
        if (i >= 0) {
            t->slots[(size_t)i * W + W - 1] = k[W - 1];
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
    ptrdiff_t found = tbl_find_from(t, key, W, tbl_home(t, key, W));
    if (found < 0)
        return IPS_OK;
    size_t hole = (size_t)found, j = hole;
    for (;;) {
        j++;
        uint32_t *s = t->slots + j * W;
        if (key_is_zero(s, W))
            break;
        /* The key at j may fill the hole unless its home lies after the hole. */
        if (slot_home(t, s) <= hole) {
            memcpy(t->slots + hole * W, s, W * sizeof(uint32_t));
            hole = j;
        }
    }
    memset(t->slots + hole * W, 0, W * sizeof(uint32_t));
    t->count--;
    if (removed)
        *removed = true;
    if (t->count == 0) {
        rebuild(t, 0, false);
    } else if (t->cap > IPS_MIN_CAP && t->count < t->cap / 5) {
        /* Shrinking is an optimisation: on failure the table stays valid. */
        (void)rebuild(t, t->cap / 2, false);
    }
    return IPS_OK;
}

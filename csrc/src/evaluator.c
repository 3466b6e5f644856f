#include "pyipset/evaluator.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "set_internal.h"
#include "table.h"

/*
 * Membership index: one probe per packet address answers every hash:ip set
 * match of the program. Each address found in any hash:ip set of the program
 * gets a row: the numbers of the hash:ip sets it is in, ascending (a pod is
 * in a handful of sets however many the program has, so rows are short and
 * the index grows with the memberships, not with addresses x sets); a match
 * is a scan of one short row. Built by ips_program_prepare() and valid while
 * no set has changed since (change counters); otherwise matches fall back to
 * probing each set.
 *
 * Its cost grows with the memberships of every hash:ip set (~4 ms for 32k at
 * 10k pods), which a batch of a few flows (an explain, a revocation pass over
 * the flows of a few addresses) never earns back. For such a batch
 * (ips_program_prepare_for) it covers the sets of dispatch entries alone: a
 * dispatch is then still one probe, and every other set match probes its set.
 */
typedef struct member_index {
    bool fresh;
    bool full;           /* every hash:ip set is indexed; else only the dispatch entries' */
    bool any;            /* the program has a hash:ip set */
    ips_table addrs;     /* the addresses; a row is the slot an address sits in */
    uint32_t *first;     /* (slots + 2): row r is ids[first[r] .. first[r + 1]); row `slots` is the zero address */
    uint32_t *ids;       /* set numbers, ascending within a row */
    int32_t *set_bit;    /* per program set: its number among the hash:ip sets, or -1 (not hash:ip) */
    uint64_t *seen;      /* per program set: its change counter when built */
} member_index;

struct ips_program {
    ips_family family;
    member_index index;
    size_t n_sets, n_chains, n_rules, n_matches;
    ips_set **sets;
    uint32_t *chain_first, *chain_len;
    ips_rule *rules;
    ips_match *matches;
    ips_net6 *nets;
    size_t n_nets;
    uint32_t entry;
    unsigned max_depth; /* longest chain of jumps from the entry */
    unsigned n_slots;   /* mark slots traced (ips_program_set_mark_slots) */
    int32_t *bit_entry; /* per hash:ip set number (index.set_bit): the match index of the dispatch entry
                           naming that set, or -1 */
    uint32_t slot_mask[IPS_MAX_MARK_SLOTS];
};

static void index_clear(member_index *ix) {
    tbl_release(&ix->addrs);
    free(ix->first);
    free(ix->ids);
    ix->first = ix->ids = NULL;
    ix->fresh = false;
}

void ips_program_free(ips_program *p) {
    if (!p)
        return;
    index_clear(&p->index);
    free(p->index.set_bit);
    free(p->index.seen);
    free(p->sets);
    free(p->chain_first);
    free(p->chain_len);
    free(p->rules);
    free(p->matches);
    free(p->nets);
    free(p->bit_entry);
    free(p);
}

/* Refuses the program: the reason into `why`, the status, nothing kept. */
#define REFUSE(st, ...)                                                                                      \
    do {                                                                                                     \
        if (why && why_len)                                                                                  \
            snprintf(why, why_len, __VA_ARGS__);                                                             \
        if (status)                                                                                          \
            *status = (st);                                                                                  \
        ips_program_free(p);                                                                                 \
        return NULL;                                                                                         \
    } while (0)

#define MAX_JUMP_DEPTH 64

static void *dup_array(const void *src, size_t n, size_t size) {
    void *p = malloc(n ? n * size : 1);
    if (p && n)
        memcpy(p, src, n * size);
    return p;
}

static bool dims_fit(ips_type type, uint8_t dims) {
    switch (type) {
    case IPS_HASH_IP:
    case IPS_HASH_NET: return dims == IPS_DIMS_SRC || dims == IPS_DIMS_DST;
    case IPS_HASH_IP_PORT: return dims == IPS_DIMS_DST_DPORT;
    case IPS_HASH_IP_PORT_IP: return dims == IPS_DIMS_SRC_DPORT_DST;
    }
    return false;
}

/* Depth of jumps below chain c; UINT32_MAX marks a loop. */
static unsigned depth_from(const ips_program *p, uint32_t c, uint8_t *state, unsigned *memo) {
    if (state[c] == 1)
        return UINT32_MAX; /* on the current path: a loop */
    if (state[c] == 2)
        return memo[c];
    state[c] = 1;
    unsigned deepest = 0;
    for (uint32_t r = p->chain_first[c]; r < p->chain_first[c] + p->chain_len[c]; r++) {
        uint8_t target = p->rules[r].target;
        if (target == IPS_TARGET_DISPATCH) { /* a GOTO to each of its chains */
            const ips_match *e = p->matches + p->rules[r].first_match + p->rules[r].n_matches;
            for (uint32_t k = 0; k < p->rules[r].jump; k++) {
                unsigned d = depth_from(p, e[k].value, state, memo);
                if (d == UINT32_MAX)
                    return UINT32_MAX;
                if (d > deepest)
                    deepest = d;
            }
            continue;
        }
        if (target != IPS_TARGET_JUMP && target != IPS_TARGET_GOTO)
            continue;
        unsigned d = depth_from(p, p->rules[r].jump, state, memo);
        if (d == UINT32_MAX)
            return UINT32_MAX;
        d += target == IPS_TARGET_JUMP; /* a GOTO keeps the stack as it is */
        if (d > deepest)
            deepest = d;
    }
    state[c] = 2;
    memo[c] = deepest;
    return deepest;
}

ips_program *ips_program_new(ips_family family, size_t n_sets, ips_set *const *sets, size_t n_chains,
                             const uint32_t *chain_first, const uint32_t *chain_len, size_t n_rules,
                             const ips_rule *rules, size_t n_matches, const ips_match *matches, size_t n_nets,
                             const ips_net6 *nets, uint32_t entry, ips_status *status, char *why,
                             size_t why_len) {
    ips_program *p = calloc(1, sizeof *p);
    if (!p)
        REFUSE(IPS_ERR_NOMEM, "out of memory");
    p->family = family;
    p->n_sets = n_sets;
    p->n_chains = n_chains;
    p->n_rules = n_rules;
    p->n_matches = n_matches;
    p->entry = entry;
    p->sets = dup_array(sets, n_sets, sizeof *sets);
    p->chain_first = dup_array(chain_first, n_chains, sizeof *chain_first);
    p->chain_len = dup_array(chain_len, n_chains, sizeof *chain_len);
    p->rules = dup_array(rules, n_rules, sizeof *rules);
    p->matches = dup_array(matches, n_matches, sizeof *matches);
    p->nets = dup_array(nets, n_nets, sizeof *nets);
    p->n_nets = n_nets;
    if (!p->sets || !p->chain_first || !p->chain_len || !p->rules || !p->matches || !p->nets)
        REFUSE(IPS_ERR_NOMEM, "out of memory");
    if (entry >= n_chains)
        REFUSE(IPS_ERR_INVALID, "entry chain %u of %zu chains", entry, n_chains);
    for (size_t c = 0; c < n_chains; c++)
        if ((size_t)chain_first[c] + chain_len[c] > n_rules)
            REFUSE(IPS_ERR_INVALID, "chain %zu runs past the %zu rules", c, n_rules);
    for (size_t i = 0; i < n_sets; i++)
        if (!sets[i] || ips_set_family(sets[i]) != family)
            REFUSE(IPS_ERR_INVALID, "set %zu is missing or of another family", i);
    if (family == IPS_INET && n_nets)
        REFUSE(IPS_ERR_INVALID, "IPv6 networks given to an IPv4 program");
    for (size_t i = 0; i < n_nets; i++)
        for (unsigned k = 0; k < 4; k++)
            if (nets[i].addr[k] & ~nets[i].mask[k])
                REFUSE(IPS_ERR_INVALID, "network %zu has address bits outside its mask", i);
    for (size_t r = 0; r < n_rules; r++) {
        const ips_rule *rule = &rules[r];
        if (rule->target > IPS_TARGET_DISPATCH)
            REFUSE(IPS_ERR_INVALID, "rule %zu: unknown target %u", r, rule->target);
        if (rule->target == IPS_TARGET_DISPATCH) {
            size_t e0 = (size_t)rule->first_match + rule->n_matches;
            if (e0 + rule->jump > n_matches)
                REFUSE(IPS_ERR_INVALID, "rule %zu: dispatch entries past the %zu matches given", r, n_matches);
            for (size_t k = e0; k < e0 + rule->jump; k++) {
                const ips_match *e = &matches[k];
                if (e->kind != IPS_MATCH_SET || e->negate || e->set >= n_sets ||
                    ips_set_type(sets[e->set]) != IPS_HASH_IP || (e->dims != IPS_DIMS_SRC && e->dims != IPS_DIMS_DST) ||
                    e->dims != matches[e0].dims)
                    REFUSE(IPS_ERR_INVALID, "rule %zu: dispatch entry %zu is not a hash:ip set on the source or "
                                            "the destination (the same for every entry)", r, k - e0);
                if (e->value >= n_chains)
                    REFUSE(IPS_ERR_INVALID, "rule %zu: dispatch entry %zu goes to chain %u, which does not exist",
                           r, k - e0, e->value);
            }
        }
        if ((rule->target == IPS_TARGET_JUMP || rule->target == IPS_TARGET_GOTO) && rule->jump >= n_chains)
            REFUSE(IPS_ERR_INVALID, "rule %zu jumps to chain %u, which does not exist", r, rule->jump);
        if ((size_t)rule->first_match + rule->n_matches > n_matches)
            REFUSE(IPS_ERR_INVALID, "rule %zu: matches past the %zu given", r, n_matches);
        for (uint32_t m = rule->first_match; m < rule->first_match + rule->n_matches; m++) {
            const ips_match *match = &matches[m];
            if (match->kind > IPS_MATCH_ADDR)
                REFUSE(IPS_ERR_INVALID, "rule %zu: unknown match kind %u", r, match->kind);
            if (match->kind == IPS_MATCH_LIMIT && rule->target != IPS_TARGET_NFLOG)
                REFUSE(IPS_ERR_INVALID, "rule %zu: a rate limit on a rule that decides (only NFLOG rules may have one)",
                       r);
            if (match->kind == IPS_MATCH_SET &&
                (match->set >= n_sets || !dims_fit(ips_set_type(sets[match->set]), match->dims)))
                REFUSE(IPS_ERR_INVALID, "rule %zu: set %u is missing or its type does not fit the match dimensions",
                       r, match->set);
            if (match->kind == IPS_MATCH_ADDR) {
                if (match->dims != IPS_DIMS_SRC && match->dims != IPS_DIMS_DST)
                    REFUSE(IPS_ERR_INVALID, "rule %zu: an address match is on the source or the destination", r);
                if (family == IPS_INET ? (match->value & ~match->value2) != 0 : match->set >= n_nets)
                    REFUSE(IPS_ERR_INVALID, "rule %zu: address match %u names no network or has bits outside its mask",
                           r, m);
            }
        }
    }
    uint8_t *state = calloc(n_chains ? n_chains : 1, 1);
    unsigned *memo = calloc(n_chains ? n_chains : 1, sizeof *memo);
    if (!state || !memo) {
        free(state);
        free(memo);
        REFUSE(IPS_ERR_NOMEM, "out of memory");
    }
    unsigned depth = depth_from(p, entry, state, memo);
    free(state);
    free(memo);
    if (depth == UINT32_MAX)
        REFUSE(IPS_ERR_INVALID, "the jumps from chain %u form a loop", entry);
    if (depth >= MAX_JUMP_DEPTH)
        REFUSE(IPS_ERR_INVALID, "jumps nest %u deep; at most %d", depth, MAX_JUMP_DEPTH - 1);
    p->max_depth = depth;
    p->index.set_bit = calloc(n_sets ? n_sets : 1, sizeof *p->index.set_bit);
    p->index.seen = calloc(n_sets ? n_sets : 1, sizeof *p->index.seen);
    if (!p->index.set_bit || !p->index.seen)
        REFUSE(IPS_ERR_NOMEM, "out of memory");
    int32_t bit = 0;
    for (size_t i = 0; i < n_sets; i++)
        p->index.set_bit[i] = ips_set_type(sets[i]) == IPS_HASH_IP ? bit++ : -1;
    p->index.any = bit > 0;
    p->bit_entry = malloc((bit ? (size_t)bit : 1) * sizeof *p->bit_entry);
    if (!p->bit_entry)
        REFUSE(IPS_ERR_NOMEM, "out of memory");
    for (int32_t b = 0; b < bit; b++)
        p->bit_entry[b] = -1;
    for (size_t r = 0; r < n_rules; r++) {
        if (rules[r].target != IPS_TARGET_DISPATCH)
            continue;
        size_t e0 = (size_t)rules[r].first_match + rules[r].n_matches;
        for (size_t k = e0; k < e0 + rules[r].jump; k++) {
            int32_t b = p->index.set_bit[matches[k].set];
            if (p->bit_entry[b] >= 0)
                REFUSE(IPS_ERR_INVALID, "rule %zu: set %u is in two dispatch entries", r, matches[k].set);
            p->bit_entry[b] = (int32_t)k;
        }
    }
    tbl_init(&p->index.addrs, family == IPS_INET ? 1 : 4, 0xFFFFFFFFu, 0);
    if (status)
        *status = IPS_OK;
    return p;
}

static void entry_words(ips_family family, const ips_entry *e, uint32_t *w) {
    unsigned aw = family == IPS_INET ? 1 : 4;
    for (unsigned k = 0; k < aw; k++)
        w[k] = (uint32_t)e->ip[4 * k] << 24 | (uint32_t)e->ip[4 * k + 1] << 16 | (uint32_t)e->ip[4 * k + 2] << 8 |
               e->ip[4 * k + 3];
}

/* Row of an address: its slot, the zero row, or -1 when it is in no hash:ip set. */
static ptrdiff_t index_row(const member_index *ix, const uint32_t *w) {
    const ips_table *t = &ix->addrs;
    if (key_is_zero(w, t->W))
        return t->zero_present ? (ptrdiff_t)tbl_phys(t) : -1;
    if (t->cap == 0)
        return -1;
    return tbl_find(t, w, t->W, tbl_hash(t, w, t->W));
}

/* Whether the index covers hash:ip set number `bit` (see member_index). */
static inline bool index_covers(const ips_program *p, int32_t bit) {
    return p->index.full || p->bit_entry[bit] >= 0;
}

ips_status ips_program_prepare(ips_program *p) { return ips_program_prepare_for(p, SIZE_MAX); }

ips_status ips_program_prepare_for(ips_program *p, size_t flows) {
    member_index *ix = &p->index;
    /* The whole index when the batch has at least as many flows as it has memberships to read. */
    size_t members = 0;
    for (size_t i = 0; i < p->n_sets && members <= flows; i++)
        if (ix->set_bit[i] >= 0)
            members += ips_set_size(p->sets[i]);
    bool full = members <= flows;
    bool stale = !ix->fresh || (full && !ix->full);
    for (size_t i = 0; i < p->n_sets && !stale; i++)
        stale = ix->seen[i] != ips_set_changes(p->sets[i]);
    if (!stale)
        return IPS_OK;
    index_clear(ix);
    ix->full = full;
    for (size_t i = 0; i < p->n_sets; i++)
        ix->seen[i] = ips_set_changes(p->sets[i]);
    if (!ix->any)
        return IPS_OK; /* no hash:ip set: nothing to index */
    /* Pass 0: every address; pass 1 (slots now final): the length of each
     * row; pass 2: the rows, filled in set order, so each comes out ascending. */
    size_t rows = 0, *fill = NULL;
    for (int pass = 0; pass < 3; pass++) {
        for (size_t i = 0; i < p->n_sets; i++) {
            if (ix->set_bit[i] < 0 || !index_covers(p, ix->set_bit[i]))
                continue;
            size_t cursor = 0;
            ips_entry e;
            while (ips_set_next(p->sets[i], &cursor, &e)) {
                uint32_t w[4];
                entry_words(p->family, &e, w);
                if (pass == 0) {
                    if (tbl_upsert(&ix->addrs, w, NULL) != IPS_OK)
                        goto nomem;
                    continue;
                }
                size_t row = (size_t)index_row(ix, w);
                if (pass == 1)
                    ix->first[row + 1]++;
                else
                    ix->ids[fill[row]++] = (uint32_t)ix->set_bit[i];
            }
        }
        if (pass == 0) {
            rows = tbl_phys(&ix->addrs) + 1;
            ix->first = calloc(rows + 1, sizeof *ix->first);
            if (!ix->first)
                goto nomem;
        } else if (pass == 1) {
            for (size_t r = 0; r < rows; r++)
                ix->first[r + 1] += ix->first[r];
            ix->ids = malloc((ix->first[rows] ? ix->first[rows] : 1) * sizeof *ix->ids);
            fill = malloc(rows * sizeof *fill);
            if (!ix->ids || !fill)
                goto nomem;
            for (size_t r = 0; r < rows; r++)
                fill[r] = ix->first[r];
        }
    }
    free(fill);
    ix->fresh = true;
    return IPS_OK;
nomem:
    free(fill);
    index_clear(ix);
    return IPS_ERR_NOMEM;
}

typedef struct flow {
    uint32_t src[4], dst[4];
    const uint32_t *src_ids, *src_end; /* the hash:ip sets the source is in (empty: none) */
    const uint32_t *dst_ids, *dst_end;
    bool indexed;                      /* the rows are valid (the index is fresh) */
    uint8_t proto;
    uint16_t dport;
} flow;

static inline bool row_has(const uint32_t *ids, const uint32_t *end, int32_t bit) {
    while (ids < end && *ids < (uint32_t)bit)
        ids++;
    return ids < end && *ids == (uint32_t)bit;
}

static inline bool match_holds(const ips_program *p, const ips_match *m, const flow *f, uint32_t mark) {
    bool hit;
    if (m->kind == IPS_MATCH_SET && f->indexed) {
        /* The common match first, outside the switch: a conditional branch
         * the predictor learns per rule, where the switch's indirect jump
         * over every kind mispredicted (a fifth of the walk's time). */
        int32_t bit = p->index.set_bit[m->set];
        if (bit >= 0 && m->dims <= IPS_DIMS_DST && index_covers(p, bit)) {
            hit = m->dims == IPS_DIMS_SRC ? row_has(f->src_ids, f->src_end, bit)
                                          : row_has(f->dst_ids, f->dst_end, bit);
            return hit != (m->negate != 0);
        }
    }
    switch (m->kind) {
    case IPS_MATCH_SET: { /* a set the index does not answer: probe it */
        const ips_set *s = p->sets[m->set];
        switch (m->dims) {
        case IPS_DIMS_SRC: hit = ips_set_test_key(s, f->src, 0, 0, NULL); break;
        case IPS_DIMS_DST: hit = ips_set_test_key(s, f->dst, 0, 0, NULL); break;
        case IPS_DIMS_DST_DPORT: hit = ips_set_test_key(s, f->dst, f->proto, f->dport, NULL); break;
        default: hit = ips_set_test_key(s, f->src, f->proto, f->dport, f->dst); break;
        }
        break;
    }
    case IPS_MATCH_PROTO: hit = f->proto == m->value; break;
    case IPS_MATCH_DPORT: hit = f->dport >= m->value && f->dport <= m->value2; break;
    case IPS_MATCH_MARK: hit = (mark & m->value2) == m->value; break;
    case IPS_MATCH_LIMIT: hit = true; break;
    case IPS_MATCH_ADDR: {
        const uint32_t *a = m->dims == IPS_DIMS_SRC ? f->src : f->dst;
        if (p->family == IPS_INET) {
            hit = (a[0] & m->value2) == m->value;
            break;
        }
        const ips_net6 *n = &p->nets[m->set];
        hit = ((a[0] & n->mask[0]) ^ n->addr[0]) == 0 && ((a[1] & n->mask[1]) ^ n->addr[1]) == 0 &&
              ((a[2] & n->mask[2]) ^ n->addr[2]) == 0 && ((a[3] & n->mask[3]) ^ n->addr[3]) == 0;
        break;
    }
    default: hit = (m->value & IPS_STATE_NEW) != 0; break;
    }
    return hit != (m->negate != 0);
}

/* The chain a dispatch's entries [e, eend) send the flow to, or -1. */
static int32_t dispatch_to(const ips_program *p, const ips_match *e, const ips_match *eend, const flow *f) {
    if (e == eend)
        return -1;
    bool src = e->dims == IPS_DIMS_SRC;
    if (f->indexed) { /* the sets the address is in, each looked up once */
        const uint32_t *ids = src ? f->src_ids : f->dst_ids, *end = src ? f->src_end : f->dst_end;
        int32_t lo = (int32_t)(e - p->matches), hi = (int32_t)(eend - p->matches);
        for (; ids < end; ids++) {
            int32_t k = p->bit_entry[*ids];
            if (k >= lo && k < hi)
                return (int32_t)p->matches[k].value;
        }
        return -1;
    }
    for (; e < eend; e++)
        if (ips_set_test_key(p->sets[e->set], src ? f->src : f->dst, 0, 0, NULL))
            return (int32_t)e->value;
    return -1;
}

/*
 * One flow through the chains. Rules are addressed by global index; a chain
 * is the range [first, first + len). Everything the walk updates lives in
 * locals (the outputs are written once at the end: an int32_t store may alias
 * the program's uint32_t arrays and would force them to be reloaded).
 */
static uint8_t eval_one(const ips_program *p, const flow *f, int32_t *decided_out, int32_t *marked_out,
                        int32_t *slots_out) {
    const ips_rule *rules = p->rules;
    const ips_match *matches = p->matches;
    const uint32_t *first = p->chain_first, *len = p->chain_len;
    uint32_t ret_r[MAX_JUMP_DEPTH], ret_end[MAX_JUMP_DEPTH];
    unsigned depth = 0;
    uint32_t r = first[p->entry], end = r + len[p->entry], mark = 0;
    int32_t decided = -1, marked = -1;
    uint8_t verdict = 1; /* running off the entry chain: its policy, ACCEPT */
    for (;;) {
        if (r >= end) {
            if (depth == 0)
                break;
            depth--;
            r = ret_r[depth];
            end = ret_end[depth];
            continue;
        }
        const ips_rule *rule = &rules[r];
        const uint32_t here = r++;
        const ips_match *m = matches + rule->first_match, *mend = m + rule->n_matches;
        while (m < mend && match_holds(p, m, f, mark))
            m++;
        if (m < mend)
            continue;
        switch (rule->target) {
        case IPS_TARGET_ACCEPT:
            decided = (int32_t)here;
            goto done;
        case IPS_TARGET_DROP:
            decided = (int32_t)here;
            verdict = 0;
            goto done;
        case IPS_TARGET_RETURN:
            if (depth == 0) {
                decided = (int32_t)here;
                goto done;
            }
            r = end; /* as if at the end of the chain */
            break;
        case IPS_TARGET_JUMP:
            ret_r[depth] = r;
            ret_end[depth] = end;
            depth++;
            r = first[rule->jump];
            end = r + len[rule->jump];
            break;
        case IPS_TARGET_GOTO:
            r = first[rule->jump];
            end = r + len[rule->jump];
            break;
        case IPS_TARGET_DISPATCH: {
            const ips_match *e = matches + rule->first_match + rule->n_matches;
            int32_t to = dispatch_to(p, e, e + rule->jump, f);
            if (to >= 0) {
                r = first[to];
                end = r + len[to];
            }
            break;
        }
        case IPS_TARGET_MARK:
            /* As the kernel: --set-xmark value/mask is (mark & ~mask) ^ value; --or-mark value (no mask)
             * is mark | value. They agree with an OR when value lies inside mask (the compiler's MARKs). */
            mark = rule->mark_mask ? (mark & ~rule->mark_mask) ^ rule->mark : mark | rule->mark;
            if (rule->mark)
                marked = (int32_t)here;
            if (slots_out)
                for (unsigned k = 0; k < p->n_slots; k++)
                    if ((rule->mark & p->slot_mask[k]) && slots_out[2 * k] < 0) {
                        slots_out[2 * k] = (int32_t)here;
                        /* the JUMP that entered the chain we are in (ret_r is the rule after it) */
                        slots_out[2 * k + 1] = depth ? (int32_t)ret_r[depth - 1] - 1 : -1;
                    }
            break;
        default: /* NFLOG: logs and goes on */
            break;
        }
    }
done:
    *decided_out = decided;
    *marked_out = marked;
    return verdict;
}

static void load_words(ips_family family, const void *col, size_t i, uint32_t *w) {
    if (family == IPS_INET) {
        w[0] = ((const uint32_t *)col)[i];
        return;
    }
    const uint8_t *b = (const uint8_t *)col + i * 16;
    for (unsigned k = 0; k < 4; k++)
        w[k] = (uint32_t)b[4 * k] << 24 | (uint32_t)b[4 * k + 1] << 16 | (uint32_t)b[4 * k + 2] << 8 | b[4 * k + 3];
}

static void eval_range(const ips_program *p, size_t from, size_t to, const void *src, const void *dst,
                       const uint8_t *proto, const uint16_t *dport, uint8_t *verdict, int32_t *rule_out,
                       int32_t *mark_rule_out, int32_t *slots_out) {
    const member_index *ix = &p->index;
    for (size_t i = from; i < to; i++) {
        flow f;
        load_words(p->family, src, i, f.src);
        load_words(p->family, dst, i, f.dst);
        f.indexed = ix->fresh;
        f.src_ids = f.src_end = f.dst_ids = f.dst_end = NULL;
        if (f.indexed) {
            ptrdiff_t rs = index_row(ix, f.src), rd = index_row(ix, f.dst);
            if (rs >= 0)
                f.src_ids = ix->ids + ix->first[rs], f.src_end = ix->ids + ix->first[rs + 1];
            if (rd >= 0)
                f.dst_ids = ix->ids + ix->first[rd], f.dst_end = ix->ids + ix->first[rd + 1];
        }
        f.proto = proto[i];
        f.dport = dport[i];
        int32_t decided, marked;
        int32_t *slots = slots_out && p->n_slots ? slots_out + i * 2 * p->n_slots : NULL;
        if (slots)
            for (unsigned k = 0; k < 2 * p->n_slots; k++)
                slots[k] = -1;
        verdict[i] = eval_one(p, &f, &decided, &marked, slots);
        if (rule_out)
            rule_out[i] = decided;
        if (mark_rule_out)
            mark_rule_out[i] = marked;
    }
}

typedef struct eval_job {
    const ips_program *p;
    size_t from, to;
    const void *src, *dst;
    const uint8_t *proto;
    const uint16_t *dport;
    uint8_t *verdict;
    int32_t *rule_out, *mark_rule_out, *slots_out;
} eval_job;

static void *eval_job_run(void *arg) {
    eval_job *j = arg;
    eval_range(j->p, j->from, j->to, j->src, j->dst, j->proto, j->dport, j->verdict, j->rule_out, j->mark_rule_out,
               j->slots_out);
    return NULL;
}

/* Below this many flows a batch is not worth a thread. */
#define EVAL_MIN_PER_THREAD 16384
#define EVAL_MAX_THREADS 16

void ips_program_eval(const ips_program *p, size_t n, const void *src, const void *dst, const uint8_t *proto,
                      const uint16_t *dport, uint8_t *verdict, int32_t *rule_out, int32_t *mark_rule_out) {
    ips_program_eval_threads(p, n, src, dst, proto, dport, verdict, rule_out, mark_rule_out, NULL, 1);
}

ips_status ips_program_set_mark_slots(ips_program *p, unsigned n, const uint32_t *masks) {
    if (n > IPS_MAX_MARK_SLOTS || (n && !masks))
        return IPS_ERR_INVALID;
    for (unsigned k = 0; k < n; k++)
        if (!masks[k])
            return IPS_ERR_INVALID;
    for (unsigned k = 0; k < n; k++)
        p->slot_mask[k] = masks[k];
    p->n_slots = n;
    return IPS_OK;
}

void ips_program_eval_threads(const ips_program *p, size_t n, const void *src, const void *dst, const uint8_t *proto,
                              const uint16_t *dport, uint8_t *verdict, int32_t *rule_out, int32_t *mark_rule_out,
                              int32_t *slots_out, unsigned threads) {
    if (threads == 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        threads = cores > 0 ? (unsigned)cores : 1;
    }
    if (threads > EVAL_MAX_THREADS)
        threads = EVAL_MAX_THREADS;
    if (threads > n / EVAL_MIN_PER_THREAD)
        threads = (unsigned)(n / EVAL_MIN_PER_THREAD);
    if (threads <= 1) {
        eval_range(p, 0, n, src, dst, proto, dport, verdict, rule_out, mark_rule_out, slots_out);
        return;
    }
    /* The program and its sets are only read: the threads share them. */
    pthread_t tid[EVAL_MAX_THREADS];
    eval_job jobs[EVAL_MAX_THREADS];
    bool started[EVAL_MAX_THREADS] = {false};
    for (unsigned t = 0; t < threads; t++) {
        jobs[t] = (eval_job){p, n * t / threads, n * (t + 1) / threads, src, dst, proto, dport, verdict, rule_out,
                             mark_rule_out, slots_out};
        if (t > 0)
            started[t] = pthread_create(&tid[t], NULL, eval_job_run, &jobs[t]) == 0;
    }
    eval_job_run(&jobs[0]);
    for (unsigned t = 1; t < threads; t++) {
        if (started[t])
            pthread_join(tid[t], NULL);
        else
            eval_job_run(&jobs[t]); /* no thread to be had: do its share here */
    }
}

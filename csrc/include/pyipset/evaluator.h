/*
 * The rule evaluator: runs a RuleProgram (chains of rules over set matches,
 * with iptables semantics) over batches of NEW connections, so the userspace
 * verifier decides exactly as the kernel's rules do.
 *
 * Semantics (those of iptables, for the matches and targets a RuleProgram uses):
 *   - A packet starts in the entry chain with mark 0 and walks its rules in
 *     order; a rule applies when all its matches hold.
 *   - ACCEPT / DROP end the walk with that verdict. JUMP enters another chain;
 *     RETURN, or the end of a chain, goes back to the rule after the jump. The
 *     end (or a RETURN) of the entry chain is ACCEPT, the policy of the
 *     built-in chains the program hangs from. MARK sets the mark to
 *     (mark & ~mask) | value and goes on. NFLOG logs and goes on.
 *   - Conntrack state: every evaluated flow is NEW.
 *   - Set matches take their key from the packet as `--match-set NAME dims`
 *     does: src / dst (hash:ip, hash:net), dst,dst (hash:ip,port: destination
 *     address and port), src,dst,dst (hash:ip,port,ip).
 *
 * The program borrows its sets: they must outlive it and must not change
 * while a batch runs; call ips_set_prepare() on each, and
 * ips_program_prepare(), after their last change.
 */
#ifndef PYIPSET_EVALUATOR_H
#define PYIPSET_EVALUATOR_H

#include "pyipset/ipset_core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ips_match_kind {
    IPS_MATCH_SET = 0,
    IPS_MATCH_PROTO = 1,   /* value: IP protocol number */
    IPS_MATCH_DPORT = 2,   /* value..value2 inclusive */
    IPS_MATCH_MARK = 3,    /* (mark & value2) == value */
    IPS_MATCH_STATE = 4,   /* value: bit mask of IPS_STATE_*; flows are NEW */
    IPS_MATCH_LIMIT = 5,   /* a rate limit (value per second, burst value2): rates are not modelled, so it
                              holds, and it is only accepted on NFLOG rules, which decide nothing */
    IPS_MATCH_ADDR = 6,    /* iptables' -s / -d (dims IPS_DIMS_SRC or IPS_DIMS_DST): the address is in a
                              network. IPv4: (address & value2) == value, value2 the mask. IPv6: the
                              network nets[set] of the program */
} ips_match_kind;

typedef enum ips_dims {
    IPS_DIMS_SRC = 0,
    IPS_DIMS_DST = 1,
    IPS_DIMS_DST_DPORT = 2,     /* hash:ip,port: dst,dst */
    IPS_DIMS_SRC_DPORT_DST = 3, /* hash:ip,port,ip: src,dst,dst */
} ips_dims;

enum { IPS_STATE_NEW = 1, IPS_STATE_ESTABLISHED = 2, IPS_STATE_RELATED = 4, IPS_STATE_INVALID = 8 };

typedef struct ips_match {
    uint8_t kind;   /* ips_match_kind */
    uint8_t dims;   /* ips_dims, for IPS_MATCH_SET */
    uint8_t negate; /* 1: the match holds when the condition does not */
    uint32_t set;   /* index into the program's sets (IPS_MATCH_SET) or nets (IPS_MATCH_ADDR, IPv6) */
    uint32_t value, value2;
} ips_match;

typedef enum ips_target {
    IPS_TARGET_ACCEPT = 0,
    IPS_TARGET_DROP = 1,
    IPS_TARGET_RETURN = 2,
    IPS_TARGET_JUMP = 3,
    IPS_TARGET_MARK = 4,
    IPS_TARGET_NFLOG = 5,
    IPS_TARGET_GOTO = 6, /* like JUMP, but the chain returns to our caller */
    IPS_TARGET_DISPATCH = 7, /* a verdict map (nftables' `ip saddr vmap @m`): GOTO the chain the packet's
                                address maps to, or go on when it maps to none. The map's entries follow
                                the rule's own matches in the matches array: `jump` of them, each an
                                IPS_MATCH_SET on a hash:ip set (the addresses sent to one chain) with dims
                                IPS_DIMS_SRC or IPS_DIMS_DST (the same for all) and `value` the chain. A set
                                is in at most one entry of a program, so an address maps to one chain */
} ips_target;

typedef struct ips_rule {
    uint8_t target;   /* ips_target */
    uint32_t chain;   /* the chain this rule belongs to */
    uint32_t jump;    /* IPS_TARGET_JUMP, IPS_TARGET_GOTO: chain index; IPS_TARGET_DISPATCH: its entries */
    uint32_t mark, mark_mask; /* IPS_TARGET_MARK, as the kernel: mask 0: mark |= value (--or-mark);
                                 else mark = (mark & ~mask) ^ value (--set-xmark value/mask) */
    uint32_t first_match, n_matches; /* a slice of the matches array */
} ips_rule;

/* An IPv6 network for IPS_MATCH_ADDR: address and mask as four host-order
 * words, most significant first; address bits outside the mask are zero. */
typedef struct ips_net6 {
    uint32_t addr[4], mask[4];
} ips_net6;

typedef struct ips_program ips_program;

/*
 * Builds a program. Rules are numbered globally; chain c owns rules
 * chain_first[c] .. chain_first[c] + chain_len[c] - 1. The arrays are
 * copied; the sets are borrowed. `nets` (IPv6 programs only; n_nets 0 for
 * IPv4) are the networks of address matches. Checks every index, that each
 * set's type and family fit its dims and the program's family, that address
 * matches have no bits outside their masks, that a dispatch's entries are
 * well formed, and that jumps form no loop (as iptables does). Returns NULL with IPS_ERR_INVALID and a reason,
 * or IPS_ERR_NOMEM.
 */
ips_program *ips_program_new(ips_family family, size_t n_sets, ips_set *const *sets, size_t n_chains,
                             const uint32_t *chain_first, const uint32_t *chain_len, size_t n_rules,
                             const ips_rule *rules, size_t n_matches, const ips_match *matches, size_t n_nets,
                             const ips_net6 *nets, uint32_t entry, ips_status *status, char *why,
                             size_t why_len);

void ips_program_free(ips_program *program);

/*
 * Makes evaluation fast again after its sets changed: indexes which hash:ip
 * sets each address belongs to, so that one probe per packet address answers
 * all of them. Call it (not concurrently with an evaluation) after changing
 * sets; without it, evaluation stays correct and probes each set instead.
 * IPS_ERR_NOMEM leaves it in that slower mode.
 */
ips_status ips_program_prepare(ips_program *program);

/*
 * The same for a batch of `flows` flows: the whole index when the batch has
 * at least as many flows as the hash:ip sets have members; for a smaller one
 * only the sets of dispatch entries are indexed (the rest are probed), which
 * costs far less to build. A later, larger batch builds the whole index.
 */
ips_status ips_program_prepare_for(ips_program *program, size_t flows);

/*
 * Evaluates n NEW flows. src/dst: uint32 host-order addresses (inet) or
 * n*16 bytes (inet6); proto uint8; dport uint16. Writes verdict[i] (1 accept,
 * 0 drop) and, when rule_out is not NULL, the global index of the rule that
 * decided (-1: the entry chain ran out, which accepts). When mark_rule_out is
 * not NULL it also gets the last MARK rule that applied (-1: none): for a
 * RuleProgram, the policy rule that admitted the flow.
 */
void ips_program_eval(const ips_program *program, size_t n, const void *src, const void *dst, const uint8_t *proto,
                      const uint16_t *dport, uint8_t *verdict, int32_t *rule_out, int32_t *mark_rule_out);

/*
 * Mark slots: up to IPS_MAX_MARK_SLOTS masks of mark bits whose setting is
 * traced (for a RuleProgram: one slot per direction, its OK and DENIED bits,
 * so that each direction's verdict can be told apart). IPS_ERR_INVALID for
 * too many slots or an empty mask; 0 slots turns tracing off. Not while a
 * batch runs.
 */
#define IPS_MAX_MARK_SLOTS 6
ips_status ips_program_set_mark_slots(ips_program *program, unsigned n, const uint32_t *masks);

/*
 * The same, split over `threads` threads (0: one per online core; batches
 * below 16,384 flows per thread use fewer). Results are identical.
 * When slots_out is not NULL it gets, per flow and per mark slot k, two
 * words at slots_out[(i * n_slots + k) * 2]: the first MARK rule that set a
 * bit of slot k's mask, and the JUMP rule that entered the chain holding that
 * MARK rule (the calling chain: for a RuleProgram, the policy group that
 * isolates the pod); -1 for none.
 */
void ips_program_eval_threads(const ips_program *program, size_t n, const void *src, const void *dst,
                              const uint8_t *proto, const uint16_t *dport, uint8_t *verdict, int32_t *rule_out,
                              int32_t *mark_rule_out, int32_t *slots_out, unsigned threads);

#ifdef __cplusplus
}
#endif

#endif

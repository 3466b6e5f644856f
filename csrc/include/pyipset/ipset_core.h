/*
 * pyipset native core: hash sets with the membership semantics of the Linux
 * kernel's ipset types, for userspace.
 *
 * What it is
 *   One set holds entries of one kernel type and one address family:
 *     hash:ip          IP
 *     hash:ip,port     IP,proto:port
 *     hash:ip,port,ip  IP,proto:port,IP
 *     hash:net         CIDR, optionally flagged nomatch
 *   A set answers membership the way the kernel's set match does, so the
 *   verifier built on it can be checked against the kernel packet for packet.
 *
 * Why it is built this way
 *   - Keys are packed into fixed-width arrays of uint32 words (an IPv4 address
 *     is one word, proto and port share a word as proto<<16 | port), stored
 *     inline in one open-addressing table with linear probing. No per-slot
 *     metadata: an all-zero slot is empty, and the one key that is all zeros
 *     (0.0.0.0 or :: in hash:ip) is kept beside the table. This keeps a
 *     hash:ip inet set at 4 bytes a slot.
 *   - The capacity is any multiple of 8: a build or a growth leaves the table
 *     5/12 full and it grows (by 1.5x) above 5/8, so lookups cost the same at
 *     every size; memory is 1.6 to 2.4 slots a member as built or grown, up
 *     to 5 after deletions (below 1/5 it shrinks back to 5/12), plus a fixed
 *     tail. Keys of 12 to 20 bytes are packed into 64-byte cache lines (a
 *     lookup reads one line), and such tables grow above 1/2 (by 1.2x);
 *     36-byte keys have a one-byte tag per slot instead.
 *   - Deletion shifts the following run back (no tombstones), so a set that
 *     churns forever never degrades.
 *   - The hash is keyed by a per-set random seed (pod IPs and ports are chosen
 *     by users, so hash flooding is an attack surface). If an insert ever
 *     probes further than IPS_PROBE_LIMIT slots, the table is rebuilt under a
 *     fresh seed: a flooding attempt that guesses collisions loses them.
 *   - hash:net keeps entries in the same table keyed by (network, prefix
 *     length) and a count of entries per prefix length, which gives the
 *     kernel's lookup: try each present prefix length, most specific first;
 *     the first entry found decides (nomatch entries decide "no"). For batch
 *     lookups the set also derives a flat index (the address space cut into
 *     intervals with one verdict each) and answers with a branch-free binary
 *     search, which costs the same whatever the mix of prefix lengths. The
 *     index is rebuilt lazily after the set changes.
 *
 * Conventions
 *   - Every function that can fail returns an ips_status. No function aborts
 *     or exits on bad input.
 *   - IPv4 addresses are uint32 in host order (the value of
 *     int(ipaddress.IPv4Address(x))). IPv6 addresses are 16 bytes in network
 *     order (ipaddress.IPv6Address(x).packed).
 *   - A set is not thread-safe for writers: concurrent readers (test calls)
 *     are safe only after ips_set_prepare() has been called since the last
 *     change. The Python binding enforces this.
 */
#ifndef PYIPSET_IPSET_CORE_H
#define PYIPSET_IPSET_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ips_status {
    IPS_OK = 0,
    IPS_ERR_NOMEM = 1,   /* allocation failed; the set is unchanged */
    IPS_ERR_INVALID = 2, /* an argument is out of range (reason in the message) */
    IPS_ERR_PARSE = 3,   /* text could not be parsed (reason in the message) */
    IPS_ERR_FAMILY = 4,  /* address of the wrong family for this set */
} ips_status;

typedef enum ips_type {
    IPS_HASH_IP = 0,
    IPS_HASH_IP_PORT = 1,
    IPS_HASH_IP_PORT_IP = 2,
    IPS_HASH_NET = 3,
} ips_type;

typedef enum ips_family {
    IPS_INET = 4,
    IPS_INET6 = 6,
} ips_family;

/* Probe distance at which an insert triggers a rebuild under a fresh seed. */
#define IPS_PROBE_LIMIT 512

/* Longest text ips_format_entry can write, terminator included. */
#define IPS_ENTRY_TEXT_MAX 128

/* Longest reason text written by the parser, terminator included. */
#define IPS_REASON_MAX 160

/*
 * One entry, unpacked. Fields a type does not use are ignored (and set to 0
 * by the parser). Addresses are 16 bytes in network order; an IPv4 address
 * occupies the first 4 bytes.
 */
typedef struct ips_entry {
    uint8_t ip[16];
    uint8_t ip2[16];  /* hash:ip,port,ip: the second address */
    uint16_t port;    /* port, or for ICMP type<<8 | code (as the kernel) */
    uint8_t proto;    /* IP protocol number; never 0 for port types */
    uint8_t cidr;     /* hash:net prefix length; 32/128 for the others */
    bool nomatch;     /* hash:net only */
} ips_entry;

typedef struct ips_set ips_set;

/*
 * Creates an empty set. seed 0 takes a random seed from the OS; any other
 * value fixes it (tests, reproducible benchmarks).
 * Returns NULL with *status set (IPS_ERR_INVALID for an unknown type or
 * family, IPS_ERR_NOMEM). The caller frees the set with ips_set_free.
 */
ips_set *ips_set_new(ips_type type, ips_family family, uint64_t seed, ips_status *status);

/* Frees the set and everything it owns. NULL is allowed. */
void ips_set_free(ips_set *set);

ips_type ips_set_type(const ips_set *set);
ips_family ips_set_family(const ips_set *set);

/* Number of entries (hash:net: nomatch entries included). */
size_t ips_set_size(const ips_set *set);

/* Bytes the set owns: header, table, and the hash:net lookup index. */
size_t ips_set_memory(const ips_set *set);

/*
 * The longest distance of any entry from its home slot (0 when every entry
 * sits at home). A diagnostic: it stays small for any input, because an
 * insert that would push it past IPS_PROBE_LIMIT reseeds the table. O(size).
 */
size_t ips_set_max_probe(const ips_set *set);

/*
 * Adds an entry. For hash:net, adding a network already present updates its
 * nomatch flag (as `ipset add -exist` does). *added (may be NULL) is true when
 * the entry was not present before.
 * Fails with IPS_ERR_INVALID for a value the type cannot hold (protocol 0, a
 * port on a protocol without ports, a prefix longer than the family allows),
 * IPS_ERR_NOMEM when growing fails; the set is then unchanged.
 */
ips_status ips_set_add(ips_set *set, const ips_entry *entry, bool *added);

/* Removes an entry (hash:net: whatever its nomatch flag). *removed may be NULL. */
ips_status ips_set_del(ips_set *set, const ips_entry *entry, bool *removed);

/*
 * Membership as the kernel tests it. For hash:net a host address (prefix
 * length 32/128) is looked up by longest prefix and a nomatch entry answers
 * false; a shorter prefix tests that exact entry (present and not nomatch),
 * unless entry->nomatch is set, which asks whether it is present as nomatch.
 */
bool ips_set_test(const ips_set *set, const ips_entry *entry);

/* Removes every entry and releases the table. */
void ips_set_clear(ips_set *set);

/*
 * Reserves room for `extra` more entries so that adding them never grows the
 * table. IPS_ERR_NOMEM leaves the set unchanged.
 */
ips_status ips_set_reserve(ips_set *set, size_t extra);

/*
 * Makes the set ready for concurrent readers: builds the hash:net lookup
 * index if the set changed since it was last built. Cheap when nothing
 * changed. IPS_ERR_NOMEM leaves the set answering correctly but slower.
 */
ips_status ips_set_prepare(ips_set *set);

/*
 * Iteration. Start with *cursor = 0; each call writes the next entry and
 * returns true, or returns false at the end. The order is unspecified and the
 * set must not change during the iteration.
 */
bool ips_set_next(const ips_set *set, size_t *cursor, ips_entry *out);

/*
 * Batch membership: n queries in columns; out[i] is set to 1 or 0.
 * Columns a type does not use may be NULL. For inet sets ip/ip2 are uint32
 * arrays (host order); for inet6 they are n*16 bytes (network order).
 * proto: uint8 protocol numbers; port: uint16. hash:net tests each address by
 * longest prefix. The set is not modified: call ips_set_prepare() first to get
 * the fast hash:net path (without it, hash:net falls back to per-length probes).
 */
void ips_set_test_many(const ips_set *set, size_t n, const void *ip, const uint8_t *proto,
                       const uint16_t *port, const void *ip2, uint8_t *out);

/*
 * Batch add with the same columns; for hash:net, cidr (may be NULL: host
 * prefix) gives prefix lengths and nomatch applies to all entries.
 * Validates every row first: on IPS_ERR_INVALID nothing was added and
 * *bad_index names the first bad row. *added counts new entries.
 */
ips_status ips_set_add_many(ips_set *set, size_t n, const void *ip, const uint8_t *proto,
                            const uint16_t *port, const void *ip2, const uint8_t *cidr,
                            bool nomatch, size_t *added, size_t *bad_index);

/* Batch delete, same columns as ips_set_add_many; *removed counts removals. */
ips_status ips_set_del_many(ips_set *set, size_t n, const void *ip, const uint8_t *proto,
                            const uint16_t *port, const void *ip2, const uint8_t *cidr,
                            size_t *removed, size_t *bad_index);

/*
 * Checks one entry against a type and family: protocol, port and prefix
 * rules. Returns IPS_OK or IPS_ERR_INVALID with a reason in `why` (which may
 * be NULL; at most IPS_REASON_MAX bytes are written).
 */
ips_status ips_entry_validate(ips_type type, ips_family family, const ips_entry *entry,
                              char *why, size_t why_len);

/*
 * Parses one entry in ipset syntax for the given type and family:
 *   hash:ip          "192.0.2.1"   ("/32" allowed)
 *   hash:ip,port     "192.0.2.1,tcp:80"  ("80" means tcp:80; icmp:8/0,
 *                    icmp:echo-request, gre:0, 47:0 are accepted too)
 *   hash:ip,port,ip  "192.0.2.1,udp:53,198.51.100.2"
 *   hash:net         "192.0.2.0/24", "192.0.2.7", optionally " nomatch"
 * Host bits of a hash:net network are cleared, as the kernel does. Ranges
 * (a-b, or a network in hash:ip) are refused: the set holds single entries.
 * `text` need not be NUL-terminated. On failure returns IPS_ERR_PARSE or
 * IPS_ERR_FAMILY with a reason in `why` (may be NULL).
 */
ips_status ips_parse_entry(ips_type type, ips_family family, const char *text, size_t len,
                           ips_entry *out, char *why, size_t why_len);

/*
 * Writes the entry as `ipset save` prints it, NUL-terminated, into buf
 * (IPS_ENTRY_TEXT_MAX bytes are always enough). Returns the length written,
 * or 0 if cap is too small.
 */
size_t ips_format_entry(ips_type type, ips_family family, const ips_entry *entry, char *buf,
                        size_t cap);

/* Kernel type name ("hash:ip,port"), or NULL for an unknown type. */
const char *ips_type_name(ips_type type);

/* Parses a kernel type name; returns IPS_ERR_PARSE if unknown. */
ips_status ips_type_from_name(const char *name, size_t len, ips_type *out);

#ifdef __cplusplus
}
#endif

#endif /* PYIPSET_IPSET_CORE_H */

/* Set operations shared inside the core (not part of the public API). */
#ifndef PYIPSET_SET_INTERNAL_H
#define PYIPSET_SET_INTERNAL_H

#include "pyipset/ipset_core.h"

/*
 * Membership of one packet key, given as address words (1 for inet, 4 for
 * inet6, most significant first): hash:ip and hash:net look at `a`;
 * hash:ip,port at a, proto, port; hash:ip,port,ip at a, proto, port, b.
 * hash:net answers by longest prefix, as the kernel's set match does.
 */
bool ips_set_test_key(const ips_set *set, const uint32_t *a, uint8_t proto, uint16_t port, const uint32_t *b);

/* A counter that moves whenever membership changes (never moves back). */
uint64_t ips_set_changes(const ips_set *set);

#endif

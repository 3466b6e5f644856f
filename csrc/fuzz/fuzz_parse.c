/*
 * Fuzz target for the entry parser (untrusted text from manifests, CLI and
 * `ipset save` output). The first byte picks the type and family; the rest is
 * the entry text. Anything parsed must format and re-parse to the same entry,
 * and must be addable, testable and removable.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "pyipset/ipset_core.h"

static void require(int cond) {
    if (!cond)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    ips_type type = (ips_type)(data[0] & 3);
    ips_family family = (data[0] & 4) ? IPS_INET6 : IPS_INET;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    ips_entry e;
    char why[IPS_REASON_MAX];
    if (ips_parse_entry(type, family, text, len, &e, why, sizeof why) != IPS_OK) {
        require(memchr(why, '\0', sizeof why) != NULL);
        return 0;
    }
    char buf[IPS_ENTRY_TEXT_MAX];
    size_t n = ips_format_entry(type, family, &e, buf, sizeof buf);
    require(n > 0 && n < sizeof buf);
    ips_entry again;
    require(ips_parse_entry(type, family, buf, n, &again, why, sizeof why) == IPS_OK);
    require(memcmp(&e, &again, sizeof e) == 0);

    ips_status st;
    ips_set *s = ips_set_new(type, family, 1, &st);
    require(s != NULL);
    bool added = false;
    require(ips_set_add(s, &e, &added) == IPS_OK && added);
    require(ips_set_test(s, &e));
    require(ips_set_prepare(s) == IPS_OK);
    bool removed = false;
    require(ips_set_del(s, &e, &removed) == IPS_OK && removed);
    require(ips_set_size(s) == 0);
    ips_set_free(s);
    return 0;
}

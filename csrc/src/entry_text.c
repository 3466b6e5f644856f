/*
 * Entry text in ipset syntax: parsing with reasons, and formatting exactly as
 * `ipset save` prints (protocol and ICMP names included, as read off ipset
 * v7.17), so that sets round-trip through the kernel's own tooling.
 */
#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "pyipset/ipset_core.h"

typedef struct slice {
    const char *p;
    size_t n;
} slice;

typedef struct proto_name {
    uint8_t number;
    const char *name;
} proto_name;

/* Names `ipset save` prints (from /etc/protocols); anything else is a number. */
static const proto_name PROTOCOLS[] = {
    {1, "icmp"}, {2, "igmp"}, {4, "ipencap"}, {6, "tcp"}, {17, "udp"}, {41, "ipv6"},
    {47, "gre"}, {50, "esp"}, {51, "ah"}, {58, "ipv6-icmp"}, {89, "ospf"}, {103, "pim"},
    {112, "vrrp"}, {132, "sctp"}, {136, "udplite"},
};

typedef struct icmp_name {
    uint8_t type, code;
    const char *name;
} icmp_name;

/* The ICMP type/code names ipset v7.17 prints (read off the tool itself). */
static const icmp_name ICMP4_NAMES[] = {
    {0, 0, "echo-reply"}, {3, 0, "network-unreachable"}, {3, 1, "host-unreachable"},
    {3, 2, "protocol-unreachable"}, {3, 3, "port-unreachable"}, {3, 4, "fragmentation-needed"},
    {3, 5, "source-route-failed"}, {3, 6, "network-unknown"}, {3, 7, "host-unknown"},
    {3, 9, "network-prohibited"}, {3, 10, "host-prohibited"}, {3, 11, "TOS-network-unreachable"},
    {3, 12, "TOS-host-unreachable"}, {3, 13, "communication-prohibited"},
    {3, 14, "host-precedence-violation"}, {3, 15, "precedence-cutoff"}, {4, 0, "source-quench"},
    {5, 0, "network-redirect"}, {5, 1, "host-redirect"}, {5, 2, "TOS-network-redirect"},
    {5, 3, "TOS-host-redirect"}, {8, 0, "echo-request"}, {9, 0, "router-advertisement"},
    {10, 0, "router-solicitation"}, {11, 0, "ttl-zero-during-transit"},
    {11, 1, "ttl-zero-during-reassembly"}, {12, 0, "ip-header-bad"}, {12, 1, "required-option-missing"},
    {13, 0, "timestamp-request"}, {14, 0, "timestamp-reply"}, {17, 0, "address-mask-request"},
    {18, 0, "address-mask-reply"},
};

static const icmp_name ICMP6_NAMES[] = {
    {1, 0, "no-route"}, {1, 1, "communication-prohibited"}, {1, 3, "address-unreachable"},
    {1, 4, "port-unreachable"}, {2, 0, "packet-too-big"}, {3, 0, "ttl-zero-during-transit"},
    {3, 1, "ttl-zero-during-reassembly"}, {4, 0, "bad-header"}, {4, 1, "unknown-header-type"},
    {4, 2, "unknown-option"}, {128, 0, "echo-request"}, {129, 0, "echo-reply"},
    {133, 0, "router-solicitation"}, {134, 0, "router-advertisement"}, {135, 0, "neighbour-solicitation"},
    {136, 0, "neighbour-advertisement"}, {137, 0, "redirect"},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

/* ASCII only, whatever the locale (and cheaper than <ctype.h>). */
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
static bool is_print(char c) { return c >= 0x20 && c < 0x7F; }
static char to_lower(char c) { return c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c; }

static ips_status fail(ips_status st, char *why, size_t why_len, const char *fmt, ...) {
    if (why && why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return st;
}

/* For messages: at most 60 characters of a slice, non-printables as '?'. */
static const char *shown(slice s, char *buf) {
    size_t n = s.n < 60 ? s.n : 60;
    for (size_t i = 0; i < n; i++)
        buf[i] = is_print(s.p[i]) ? s.p[i] : '?';
    if (s.n > 60) {
        memcpy(buf + 60, "...", 3);
        n = 63;
    }
    buf[n] = '\0';
    return buf;
}

static slice trim(slice s) {
    while (s.n && is_space(s.p[0])) {
        s.p++;
        s.n--;
    }
    while (s.n && is_space(s.p[s.n - 1]))
        s.n--;
    return s;
}

static bool slice_eq_nocase(slice s, const char *word) {
    size_t n = strlen(word);
    if (s.n != n)
        return false;
    for (size_t i = 0; i < n; i++)
        if (to_lower(s.p[i]) != to_lower(word[i]))
            return false;
    return true;
}

static const char *find_char(slice s, char c) { return s.n ? memchr(s.p, c, s.n) : NULL; }

/* Decimal number <= max; false for empty, non-digits or overflow. */
static bool parse_uint(slice s, unsigned long max, unsigned long *out) {
    if (s.n == 0 || s.n > 10)
        return false;
    unsigned long v = 0;
    for (size_t i = 0; i < s.n; i++) {
        if (!is_digit(s.p[i]))
            return false;
        v = v * 10 + (unsigned long)(s.p[i] - '0');
    }
    if (v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_ipv4(slice s, uint8_t out[4]) {
    size_t start = 0;
    int part = 0;
    for (size_t i = 0; i <= s.n; i++) {
        if (i < s.n && s.p[i] != '.')
            continue;
        slice oct = {s.p + start, i - start};
        unsigned long v;
        /* Leading zeros are refused: some tools read them as octal. */
        if (part > 3 || oct.n == 0 || oct.n > 3 || (oct.n > 1 && oct.p[0] == '0') || !parse_uint(oct, 255, &v))
            return false;
        out[part++] = (uint8_t)v;
        start = i + 1;
    }
    return part == 4;
}

static bool parse_ipv6(slice s, uint8_t out[16]) {
    char buf[INET6_ADDRSTRLEN + 1];
    if (s.n == 0 || s.n >= sizeof buf || memchr(s.p, '\0', s.n))
        return false;
    memcpy(buf, s.p, s.n);
    buf[s.n] = '\0';
    return inet_pton(AF_INET6, buf, out) == 1;
}

static ips_status parse_addr(ips_family family, slice s, uint8_t out[16], char *why, size_t why_len) {
    char b[64];
    memset(out, 0, 16);
    bool looks_v6 = find_char(s, ':') != NULL;
    if (family == IPS_INET) {
        if (parse_ipv4(s, out))
            return IPS_OK;
        uint8_t tmp[16];
        if (looks_v6 && parse_ipv6(s, tmp))
            return fail(IPS_ERR_FAMILY, why, why_len, "'%s' is an IPv6 address but the set is family inet", shown(s, b));
        return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not an IPv4 address", shown(s, b));
    }
    if (looks_v6 && parse_ipv6(s, out))
        return IPS_OK;
    uint8_t tmp[4];
    if (!looks_v6 && parse_ipv4(s, tmp))
        return fail(IPS_ERR_FAMILY, why, why_len, "'%s' is an IPv4 address but the set is family inet6", shown(s, b));
    return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not an IPv6 address", shown(s, b));
}

static ips_status parse_proto(slice s, uint8_t *proto, char *why, size_t why_len) {
    char b[64];
    unsigned long v;
    if (parse_uint(s, 255, &v)) {
        if (v == 0)
            return fail(IPS_ERR_PARSE, why, why_len, "protocol 0 is not valid");
        *proto = (uint8_t)v;
        return IPS_OK;
    }
    if (slice_eq_nocase(s, "icmpv6")) {
        *proto = 58;
        return IPS_OK;
    }
    for (size_t i = 0; i < COUNT(PROTOCOLS); i++)
        if (slice_eq_nocase(s, PROTOCOLS[i].name)) {
            *proto = PROTOCOLS[i].number;
            return IPS_OK;
        }
    return fail(IPS_ERR_PARSE, why, why_len,
                "unknown protocol '%s' (expected tcp, udp, sctp, udplite, icmp, icmpv6, a name from "
                "/etc/protocols or a number 1-255)", shown(s, b));
}

/* "[proto:]port", "icmp:type/code", "icmp:name". */
static ips_status parse_port_spec(ips_family family, slice s, ips_entry *e, char *why, size_t why_len) {
    char b[64];
    slice proto_s = {"tcp", 3}, port_s = s;
    const char *colon = find_char(s, ':');
    if (colon) {
        proto_s = (slice){s.p, (size_t)(colon - s.p)};
        port_s = (slice){colon + 1, s.n - (size_t)(colon - s.p) - 1};
    }
    ips_status st = parse_proto(proto_s, &e->proto, why, why_len);
    if (st != IPS_OK)
        return st;
    if (ips_entry_validate(IPS_HASH_IP_PORT, family, e, why, why_len) != IPS_OK)
        return IPS_ERR_PARSE; /* protocol of the wrong family */
    if (e->proto == 1 || e->proto == 58) {
        const icmp_name *names = e->proto == 1 ? ICMP4_NAMES : ICMP6_NAMES;
        size_t count = e->proto == 1 ? COUNT(ICMP4_NAMES) : COUNT(ICMP6_NAMES);
        const char *slash = find_char(port_s, '/');
        unsigned long type, code;
        if (slash) {
            slice ts = {port_s.p, (size_t)(slash - port_s.p)};
            slice cs = {slash + 1, port_s.n - ts.n - 1};
            if (!parse_uint(ts, 255, &type) || !parse_uint(cs, 255, &code))
                return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not an ICMP type/code (each 0-255)",
                            shown(port_s, b));
            e->port = (uint16_t)(type << 8 | code);
            return IPS_OK;
        }
        for (size_t i = 0; i < count; i++)
            if (slice_eq_nocase(port_s, names[i].name)) {
                e->port = (uint16_t)(names[i].type << 8 | names[i].code);
                return IPS_OK;
            }
        return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not an ICMP type/code or a known ICMP name",
                    shown(port_s, b));
    }
    unsigned long port;
    if (find_char(port_s, '-'))
        return fail(IPS_ERR_PARSE, why, why_len, "port range '%s' is not a single entry; add each port",
                    shown(port_s, b));
    if (!parse_uint(port_s, 65535, &port))
        return fail(IPS_ERR_PARSE, why, why_len, "port '%s' is not a number 0-65535 (service names are not resolved)",
                    shown(port_s, b));
    e->port = (uint16_t)port;
    return ips_entry_validate(IPS_HASH_IP_PORT, family, e, why, why_len) == IPS_OK ? IPS_OK : IPS_ERR_PARSE;
}

ips_status ips_parse_entry(ips_type type, ips_family family, const char *text, size_t len, ips_entry *out,
                           char *why, size_t why_len) {
    char b[64];
    const unsigned host = family == IPS_INET ? 32 : 128;
    memset(out, 0, sizeof *out);
    out->cidr = (uint8_t)host;
    if (ips_type_name(type) == NULL || (family != IPS_INET && family != IPS_INET6))
        return fail(IPS_ERR_INVALID, why, why_len, "unknown set type or family");
    slice s = trim((slice){text, len});
    if (s.n == 0)
        return fail(IPS_ERR_PARSE, why, why_len, "empty entry");

    /* Trailing " nomatch" flag. */
    for (size_t i = s.n; i > 0; i--) {
        if (!is_space(s.p[i - 1]))
            continue;
        slice word = {s.p + i, s.n - i};
        if (!slice_eq_nocase(word, "nomatch"))
            return fail(IPS_ERR_PARSE, why, why_len, "unexpected '%s' after the entry (only 'nomatch' may follow)",
                        shown(word, b));
        if (type != IPS_HASH_NET)
            return fail(IPS_ERR_PARSE, why, why_len, "nomatch is only valid in hash:net sets");
        out->nomatch = true;
        s = trim((slice){s.p, i});
        break;
    }

    slice parts[3];
    size_t nparts = 0;
    size_t start = 0;
    for (size_t i = 0; i <= s.n; i++) {
        if (i < s.n && s.p[i] != ',')
            continue;
        if (nparts == 3)
            return fail(IPS_ERR_PARSE, why, why_len, "'%s' has too many ','-separated parts for %s", shown(s, b),
                        ips_type_name(type));
        parts[nparts++] = trim((slice){s.p + start, i - start});
        start = i + 1;
    }
    size_t want = type == IPS_HASH_IP_PORT ? 2 : type == IPS_HASH_IP_PORT_IP ? 3 : 1;
    if (nparts != want)
        return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not a %s entry (expected %s)", shown(s, b),
                    ips_type_name(type),
                    type == IPS_HASH_IP ? "IP" : type == IPS_HASH_IP_PORT ? "IP,proto:port"
                                             : type == IPS_HASH_IP_PORT_IP ? "IP,proto:port,IP"
                                                                           : "IP[/prefix] [nomatch]");

    slice addr = parts[0];
    const char *slash = find_char(addr, '/');
    unsigned long cidr = host;
    if (slash) {
        slice pl = {slash + 1, addr.n - (size_t)(slash - addr.p) - 1};
        addr.n = (size_t)(slash - addr.p);
        if (!parse_uint(pl, host, &cidr))
            return fail(IPS_ERR_PARSE, why, why_len, "prefix length '%s' is not a number 0-%u", shown(pl, b), host);
        if (type != IPS_HASH_NET && cidr != host)
            return fail(IPS_ERR_PARSE, why, why_len,
                        "/%lu is a network, not a %s entry; add its addresses one by one or use hash:net", cidr,
                        ips_type_name(type));
    }
    if (find_char(addr, '-'))
        return fail(IPS_ERR_PARSE, why, why_len, "address range '%s' is not a single entry", shown(addr, b));
    ips_status st = parse_addr(family, addr, out->ip, why, why_len);
    if (st != IPS_OK)
        return st;
    out->cidr = (uint8_t)cidr;
    if (type == IPS_HASH_NET) {
        /* Clear host bits, as the kernel does. */
        for (unsigned i = 0; i < 16; i++) {
            unsigned lo = i * 8;
            if (cidr <= lo)
                out->ip[i] = 0;
            else if (cidr < lo + 8)
                out->ip[i] &= (uint8_t)(0xFF << (lo + 8 - cidr));
        }
    }
    if (want >= 2) {
        st = parse_port_spec(family, parts[1], out, why, why_len);
        if (st != IPS_OK)
            return st;
    }
    if (want == 3) {
        if (find_char(parts[2], '/') || find_char(parts[2], '-'))
            return fail(IPS_ERR_PARSE, why, why_len, "'%s' is not a single address", shown(parts[2], b));
        st = parse_addr(family, parts[2], out->ip2, why, why_len);
        if (st != IPS_OK)
            return st;
    }
    return IPS_OK;
}

static size_t format_addr(ips_family family, const uint8_t *ip, char *buf, size_t cap) {
    if (family == IPS_INET)
        return (size_t)snprintf(buf, cap, "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
    char tmp[INET6_ADDRSTRLEN];
    if (!inet_ntop(AF_INET6, ip, tmp, sizeof tmp))
        return (size_t)snprintf(buf, cap, "?");
    return (size_t)snprintf(buf, cap, "%s", tmp);
}

static size_t format_port(ips_family family, const ips_entry *e, char *buf, size_t cap) {
    const char *pname = NULL;
    for (size_t i = 0; i < COUNT(PROTOCOLS); i++)
        if (PROTOCOLS[i].number == e->proto)
            pname = PROTOCOLS[i].name;
    char num[8];
    if (!pname) {
        snprintf(num, sizeof num, "%u", e->proto);
        pname = num;
    }
    bool icmp = (family == IPS_INET && e->proto == 1) || (family == IPS_INET6 && e->proto == 58);
    if (icmp) {
        const icmp_name *names = family == IPS_INET ? ICMP4_NAMES : ICMP6_NAMES;
        size_t count = family == IPS_INET ? COUNT(ICMP4_NAMES) : COUNT(ICMP6_NAMES);
        for (size_t i = 0; i < count; i++)
            if (names[i].type == e->port >> 8 && names[i].code == (e->port & 0xFF))
                return (size_t)snprintf(buf, cap, "%s:%s", pname, names[i].name);
        return (size_t)snprintf(buf, cap, "%s:%u/%u", pname, e->port >> 8, e->port & 0xFF);
    }
    return (size_t)snprintf(buf, cap, "%s:%u", pname, e->port);
}

size_t ips_format_entry(ips_type type, ips_family family, const ips_entry *e, char *buf, size_t cap) {
    char out[IPS_ENTRY_TEXT_MAX];
    size_t n = format_addr(family, e->ip, out, sizeof out);
    unsigned host = family == IPS_INET ? 32 : 128;
    switch (type) {
    case IPS_HASH_IP:
        break;
    case IPS_HASH_IP_PORT:
    case IPS_HASH_IP_PORT_IP:
        n += (size_t)snprintf(out + n, sizeof out - n, ",");
        n += format_port(family, e, out + n, sizeof out - n);
        if (type == IPS_HASH_IP_PORT_IP) {
            n += (size_t)snprintf(out + n, sizeof out - n, ",");
            n += format_addr(family, e->ip2, out + n, sizeof out - n);
        }
        break;
    case IPS_HASH_NET:
        if (e->cidr != host)
            n += (size_t)snprintf(out + n, sizeof out - n, "/%u", e->cidr);
        if (e->nomatch)
            n += (size_t)snprintf(out + n, sizeof out - n, " nomatch");
        break;
    }
    if (n + 1 > cap)
        return 0;
    memcpy(buf, out, n + 1);
    return n;
}

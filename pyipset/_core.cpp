// pybind11 binding of the native set core (csrc/). The Python-facing class is
// pyipset.IPSet, a thin Python subclass of _core.IPSet (see pyipset/sets.py).
//
// - Status codes become Python exceptions in exactly one place: raise_status().
// - Batch calls take numpy arrays without copying them (exact dtype, C order
//   required), release the GIL around the C loop, and return numpy.bool_.
// - A set touched by a batch call that released the GIL cannot be changed
//   from another thread until that call returns: such a change raises
//   RuntimeError instead of racing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <arpa/inet.h>

#include <array>
#include <cstring>
#include <string>
#include <vector>

extern "C" {
#include "pyipset/evaluator.h"
#include "pyipset/ipset_core.h"
}

namespace py = pybind11;

namespace {

[[noreturn]] void raise_status(ips_status st, const std::string &message) {
    switch (st) {
    case IPS_ERR_NOMEM:
        throw std::bad_alloc();
    case IPS_ERR_INVALID:
    case IPS_ERR_PARSE:
    case IPS_ERR_FAMILY:
    default:
        throw py::value_error(message);
    }
}

const char *family_name(ips_family f) { return f == IPS_INET ? "inet" : "inet6"; }

const char *column_names(ips_type t) {
    switch (t) {
    case IPS_HASH_IP: return "(ip)";
    case IPS_HASH_IP_PORT: return "(ip, proto, port)";
    case IPS_HASH_IP_PORT_IP: return "(src, proto, port, dst)";
    case IPS_HASH_NET: return "(ip)";
    }
    return "";
}

size_t column_count(ips_type t) {
    switch (t) {
    case IPS_HASH_IP: return 1;
    case IPS_HASH_IP_PORT: return 3;
    case IPS_HASH_IP_PORT_IP: return 4;
    case IPS_HASH_NET: return 1;
    }
    return 0;
}

// Error messages quote at most this much of a value a user gave: a bad
// 1.6 MB entry must not become a 1.6 MB message.
constexpr size_t QUOTE_MAX = 80;

std::string bounded(const std::string &text) {
    if (text.size() <= QUOTE_MAX)
        return text;
    return text.substr(0, QUOTE_MAX) + "... (" + std::to_string(text.size()) + " characters)";
}

std::string py_repr(py::handle h) { return bounded(py::repr(h).cast<std::string>()); }

ips_family parse_family(const std::string &family) {
    if (family == "inet")
        return IPS_INET;
    if (family == "inet6")
        return IPS_INET6;
    throw py::value_error("unknown family '" + bounded(family) + "' (expected inet or inet6)");
}

// Checks one batch column: a numpy array of exactly this dtype, C-contiguous,
// with the expected shape. No conversion, so no copy.
py::array column(py::handle obj, const std::string &what, char kind, size_t itemsize, int ndim, py::ssize_t inner,
                 py::ssize_t n) {
    const char *want_dtype = kind == 'u' ? (itemsize == 1 ? "uint8" : itemsize == 2 ? "uint16" : "uint32") : "?";
    std::string shape_desc = ndim == 1 ? "1-D" : "(N, " + std::to_string(inner) + ")";
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(what + " must be a numpy.ndarray of " + want_dtype + " with shape " + shape_desc +
                             ", not " + Py_TYPE(obj.ptr())->tp_name);
    py::array a = py::reinterpret_borrow<py::array>(obj);
    py::dtype dt = a.dtype();
    bool native = dt.byteorder() == '=' || dt.byteorder() == '|' || (dt.byteorder() == '<' && PY_LITTLE_ENDIAN);
    if (dt.kind() != kind || static_cast<size_t>(dt.itemsize()) != itemsize || !native)
        throw py::type_error(what + " must have dtype " + want_dtype + ", not " +
                             py::str(py::handle(reinterpret_cast<PyObject *>(dt.ptr()))).cast<std::string>() +
                             " (convert with .astype(numpy." + want_dtype + "))");
    if (a.ndim() != ndim || (ndim == 2 && a.shape(1) != inner))
        throw py::value_error(what + " must have shape " + shape_desc + ", not " + py_repr(py::getattr(a, "shape")));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(what + " must be C-contiguous (use numpy.ascontiguousarray)");
    if (n >= 0 && a.shape(0) != n)
        throw py::value_error(what + " has " + std::to_string(a.shape(0)) + " rows but the first column has " +
                              std::to_string(n));
    return a;
}


class NativeSet {
  public:
    NativeSet(const std::string &type, const std::string &family, uint64_t seed) {
        ips_type t;
        if (ips_type_from_name(type.data(), type.size(), &t) != IPS_OK)
            throw py::value_error("unknown set type '" + bounded(type) +
                                  "' (expected hash:ip, hash:ip,port, hash:ip,port,ip or hash:net)");
        ips_status st;
        set_ = ips_set_new(t, parse_family(family), seed, &st);
        if (!set_)
            raise_status(st, "cannot create set");
    }
    ~NativeSet() { ips_set_free(set_); }
    NativeSet(const NativeSet &) = delete;
    NativeSet &operator=(const NativeSet &) = delete;

    ips_type type() const { return ips_set_type(set_); }
    ips_family family() const { return ips_set_family(set_); }
    std::string type_name() const { return ips_type_name(type()); }
    std::string family_str() const { return family_name(family()); }
    size_t size() const {
        check_readable();
        return ips_set_size(set_);
    }
    size_t memory() const {
        check_readable();
        return ips_set_memory(set_);
    }
    uint64_t version() const { return version_; }

    // For the evaluator: the raw set, and a read lease held across a batch.
    ips_set *raw() const { return set_; }
    void begin_read() {
        check_readable();
        ips_status st = ips_set_prepare(set_);
        if (st != IPS_OK && st != IPS_ERR_NOMEM)
            raise_status(st, "cannot prepare set");
        readers_++;
    }
    void end_read() { readers_--; }

    bool contains(py::handle entry) const {
        check_readable();
        ips_entry e;
        if (!parse(entry, &e, /*quiet=*/true))
            return false;
        return ips_set_test(set_, &e);
    }

    bool add(py::handle entry, bool nomatch) {
        check_writable();
        ips_entry e;
        parse(entry, &e, false);
        if (nomatch) {
            if (type() != IPS_HASH_NET)
                throw py::value_error("nomatch is only valid in hash:net sets, not " + type_name());
            e.nomatch = true;
        }
        bool added = false;
        ips_status st = ips_set_add(set_, &e, &added);
        if (st != IPS_OK)
            raise_status(st, "cannot add " + py_repr(entry));
        version_++;
        return added;
    }

    bool discard(py::handle entry) {
        check_writable();
        ips_entry e;
        parse(entry, &e, false);
        bool removed = false;
        ips_status st = ips_set_del(set_, &e, &removed);
        if (st != IPS_OK)
            raise_status(st, "cannot remove " + py_repr(entry));
        version_++;
        return removed;
    }

    void clear() {
        check_writable();
        ips_set_clear(set_);
        version_++;
    }

    void reserve(size_t extra) {
        check_writable();
        ips_status st = ips_set_reserve(set_, extra);
        if (st != IPS_OK)
            raise_status(st, "cannot reserve room");
    }

    // Next entry as text from *cursor, or None at the end.
    py::object next_entry(size_t &cursor) const {
        check_readable();
        ips_entry e;
        if (!ips_set_next(set_, &cursor, &e))
            return py::none();
        char buf[IPS_ENTRY_TEXT_MAX];
        size_t n = ips_format_entry(type(), family(), &e, buf, sizeof buf);
        return py::str(buf, n);
    }

    py::array contains_many(py::args cols) {
        Columns c = columns(cols, "contains_many");
        py::array_t<bool> out(static_cast<py::ssize_t>(c.n));
        uint8_t *dst = reinterpret_cast<uint8_t *>(out.mutable_data());
        check_readable();
        {
            // Built under the GIL: concurrent readers then share a fresh index.
            ips_status st = ips_set_prepare(set_);
            if (st != IPS_OK && st != IPS_ERR_NOMEM)
                raise_status(st, "cannot prepare set");
        }
        Guard g(readers_);
        py::gil_scoped_release nogil;
        ips_set_test_many(set_, c.n, c.ip, c.proto, c.port, c.ip2, dst);
        return std::move(out);
    }

    size_t add_many(py::args cols, py::object cidr, bool nomatch) {
        Columns c = columns(cols, "add_many");
        const uint8_t *cidr_p = net_prefixes(cidr, c.n, "add_many");
        if (nomatch && type() != IPS_HASH_NET)
            throw py::value_error("nomatch is only valid in hash:net sets, not " + type_name());
        check_writable();
        size_t added = 0, bad = 0;
        ips_status st;
        {
            WriterGuard g(writer_);
            py::gil_scoped_release nogil;
            st = ips_set_add_many(set_, c.n, c.ip, c.proto, c.port, c.ip2, cidr_p, nomatch, &added, &bad);
        }
        version_++;
        if (st == IPS_ERR_INVALID)
            raise_row(st, c, cidr_p, bad, "add_many");
        if (st != IPS_OK)
            raise_status(st, "add_many failed");
        return added;
    }

    size_t discard_many(py::args cols, py::object cidr) {
        Columns c = columns(cols, "discard_many");
        const uint8_t *cidr_p = net_prefixes(cidr, c.n, "discard_many");
        check_writable();
        size_t removed = 0, bad = 0;
        ips_status st;
        {
            WriterGuard g(writer_);
            py::gil_scoped_release nogil;
            st = ips_set_del_many(set_, c.n, c.ip, c.proto, c.port, c.ip2, cidr_p, &removed, &bad);
        }
        version_++;
        if (st == IPS_ERR_INVALID)
            raise_row(st, c, cidr_p, bad, "discard_many");
        if (st != IPS_OK)
            raise_status(st, "discard_many failed");
        return removed;
    }

  private:
    struct Columns {
        size_t n = 0;
        const void *ip = nullptr;
        const uint8_t *proto = nullptr;
        const uint16_t *port = nullptr;
        const void *ip2 = nullptr;
        std::vector<py::array> keep; // keeps the arrays alive while C reads them
    };

    struct Guard {
        explicit Guard(int &c) : c_(c) { c_++; }
        ~Guard() { c_--; }
        int &c_;
    };
    struct WriterGuard {
        explicit WriterGuard(bool &w) : w_(w) { w_ = true; }
        ~WriterGuard() { w_ = false; }
        bool &w_;
    };

    void check_readable() const {
        if (writer_)
            throw std::runtime_error("IPSet is being changed by a batch call in another thread");
    }
    void check_writable() const {
        check_readable();
        if (readers_ > 0)
            throw std::runtime_error("IPSet is being read by a batch call in another thread");
    }

    // Parses an entry; with quiet, malformed text answers false instead of raising.
    bool parse(py::handle entry, ips_entry *e, bool quiet) const {
        py::object text_obj;
        if (PyUnicode_Check(entry.ptr())) {
            text_obj = py::reinterpret_borrow<py::object>(entry);
        } else if (is_ipaddress(entry)) {
            text_obj = py::str(entry);
        } else {
            throw py::type_error(std::string("an IPSet entry must be a str in ipset syntax (or an ipaddress "
                                             "address or network), not ") +
                                 Py_TYPE(entry.ptr())->tp_name);
        }
        Py_ssize_t len;
        const char *text = PyUnicode_AsUTF8AndSize(text_obj.ptr(), &len);
        if (!text)
            throw py::error_already_set();
        if (quiet) // membership only asks whether it parses: no reason needed
            return ips_parse_entry(type(), family(), text, static_cast<size_t>(len), e, nullptr, 0) == IPS_OK;
        char why[IPS_REASON_MAX];
        why[0] = '\0';
        ips_status st = ips_parse_entry(type(), family(), text, static_cast<size_t>(len), e, why, sizeof why);
        if (st == IPS_OK)
            return true;
        raise_status(st, "invalid " + type_name() + " entry " + py_repr(text_obj) + ": " + why);
    }

    static bool is_ipaddress(py::handle h) {
        // Kept for the life of the process on purpose: a static py::object
        // would be released after the interpreter has finalized.
        static PyObject *kinds = nullptr;
        if (!kinds) {
            py::module_ ipa = py::module_::import("ipaddress");
            kinds = py::make_tuple(ipa.attr("IPv4Address"), ipa.attr("IPv6Address"), ipa.attr("IPv4Network"),
                                   ipa.attr("IPv6Network"))
                        .release()
                        .ptr();
        }
        int r = PyObject_IsInstance(h.ptr(), kinds);
        if (r < 0)
            throw py::error_already_set();
        return r == 1;
    }

    py::array address_column(py::handle obj, const std::string &what, py::ssize_t n) const {
        if (family() == IPS_INET)
            return column(obj, what + " (IPv4 addresses as uint32 in host order)", 'u', 4, 1, 0, n);
        return column(obj, what + " (IPv6 addresses as 16 bytes in network order)", 'u', 1, 2, 16, n);
    }

    Columns columns(const py::args &cols, const char *method) const {
        const ips_type t = type();
        if (cols.size() != column_count(t))
            throw py::type_error(std::string(method) + "() on a " + type_name() + " set takes " +
                                 std::to_string(column_count(t)) + " array(s) " + column_names(t) + ", got " +
                                 std::to_string(cols.size()));
        Columns c;
        py::array ip = address_column(cols[0], "column 0 (ip)", -1);
        c.n = static_cast<size_t>(ip.shape(0));
        c.ip = ip.data();
        c.keep.push_back(ip);
        if (t == IPS_HASH_IP_PORT || t == IPS_HASH_IP_PORT_IP) {
            py::ssize_t n = static_cast<py::ssize_t>(c.n);
            py::array proto = column(cols[1], "column 1 (proto, IP protocol numbers)", 'u', 1, 1, 0, n);
            py::array port = column(cols[2], "column 2 (port)", 'u', 2, 1, 0, n);
            c.proto = static_cast<const uint8_t *>(proto.data());
            c.port = static_cast<const uint16_t *>(port.data());
            c.keep.push_back(proto);
            c.keep.push_back(port);
            if (t == IPS_HASH_IP_PORT_IP) {
                py::array ip2 = address_column(cols[3], "column 3 (dst)", n);
                c.ip2 = ip2.data();
                c.keep.push_back(ip2);
            }
        }
        return c;
    }

    const uint8_t *net_prefixes(const py::object &cidr, size_t n, const char *method) {
        if (cidr.is_none())
            return nullptr;
        if (type() != IPS_HASH_NET)
            throw py::type_error(std::string(method) + "(): cidr= is only for hash:net sets");
        cidr_keep_ = column(cidr, "cidr (prefix lengths)", 'u', 1, 1, 0, static_cast<py::ssize_t>(n));
        return static_cast<const uint8_t *>(cidr_keep_.data());
    }

    [[noreturn]] void raise_row(ips_status st, const Columns &c, const uint8_t *cidr, size_t row,
                                const char *method) const {
        // Rebuild the row as an entry to say exactly what is wrong with it.
        ips_entry e;
        std::memset(&e, 0, sizeof e);
        if (family() == IPS_INET) {
            uint32_t v = static_cast<const uint32_t *>(c.ip)[row];
            e.ip[0] = uint8_t(v >> 24), e.ip[1] = uint8_t(v >> 16), e.ip[2] = uint8_t(v >> 8), e.ip[3] = uint8_t(v);
        }
        e.cidr = cidr ? cidr[row] : (family() == IPS_INET ? 32 : 128);
        if (c.proto) {
            e.proto = c.proto[row];
            e.port = c.port[row];
        }
        char why[IPS_REASON_MAX] = "";
        ips_entry_validate(type(), family(), &e, why, sizeof why);
        raise_status(st, std::string(method) + "(): row " + std::to_string(row) + " is invalid: " + why +
                             "; nothing was changed");
    }

    ips_set *set_ = nullptr;
    uint64_t version_ = 0;
    int readers_ = 0;
    bool writer_ = false;
    py::array cidr_keep_;
};

class EntryIterator {
  public:
    explicit EntryIterator(py::object owner)
        : owner_(std::move(owner)), set_(owner_.cast<NativeSet *>()), version_(set_->version()) {}
    py::object next() {
        if (set_->version() != version_)
            throw std::runtime_error("IPSet changed during iteration");
        py::object v = set_->next_entry(cursor_);
        if (v.is_none())
            throw py::stop_iteration();
        return v;
    }

  private:
    py::object owner_;
    NativeSet *set_;
    uint64_t version_;
    size_t cursor_ = 0;
};

using Table = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

// The values of an int64 table of `width` columns (1: a vector), each checked to fit 32 bits unsigned.
static std::vector<uint32_t> rows(const Table &t, py::ssize_t width, const char *what) {
    const bool shaped = width == 1 ? t.ndim() == 1 || (t.ndim() == 2 && t.shape(1) == 1)
                                   : t.ndim() == 2 && t.shape(1) == width;
    if (!shaped && t.size() != 0)
        throw py::value_error(std::string(what) + ": expected " +
                              (width == 1 ? std::string("a vector") : std::to_string(width) + " columns"));
    std::vector<uint32_t> out(static_cast<size_t>(t.size()));
    const int64_t *v = t.data();
    for (size_t i = 0; i < out.size(); i++) {
        if (v[i] < 0 || v[i] > UINT32_MAX)
            throw py::value_error(std::string(what) + ": value " + std::to_string(v[i]) + " out of range");
        out[i] = static_cast<uint32_t>(v[i]);
    }
    return out;
}

static uint8_t byte(uint32_t v, const char *what) {
    if (v > UINT8_MAX)
        throw py::value_error(std::string(what) + " " + std::to_string(v) + " out of range");
    return static_cast<uint8_t>(v);
}

// A RuleProgram loaded into the native evaluator. It keeps the Python set
// objects alive and holds a read lease on each during a batch, so a set can
// not change under a running evaluation.
class NativeProgram {
  public:
    // The program as int64 tables (numpy, C order): rules [n, 7] (target, chain, jump, mark, mark_mask,
    // first_match, n_matches), matches [m, 6] (kind, dims, negate, set, value, value2), nets [k, 8] (4
    // address words, 4 mask words). Each value is checked to fit its field; ips_program_new checks the rest.
    NativeProgram(const std::string &family, py::list sets, const Table &chain_first, const Table &chain_len,
                  const Table &rules, const Table &matches, uint32_t entry, const Table &nets)
        : sets_(sets) {
        if (family != "inet" && family != "inet6")
            throw py::value_error("unknown family '" + bounded(family) + "' (expected inet or inet6)");
        family_ = family == "inet" ? IPS_INET : IPS_INET6;
        auto first = rows(chain_first, 1, "chain_first"), len = rows(chain_len, 1, "chain_len");
        if (first.size() != len.size())
            throw py::value_error("chain_first and chain_len differ in length");
        std::vector<ips_set *> raw;
        for (py::handle h : sets) {
            raw.push_back(h.cast<NativeSet *>()->raw());
            natives_.push_back(h.cast<NativeSet *>());
        }
        auto rv = rows(rules, 7, "rules"), mv = rows(matches, 6, "matches"), nv = rows(nets, 8, "nets");
        std::vector<ips_rule> r(rv.size() / 7);
        for (size_t i = 0; i < r.size(); i++) {
            const uint32_t *x = &rv[7 * i];
            r[i] = ips_rule{byte(x[0], "rule target"), x[1], x[2], x[3], x[4], x[5], x[6]};
        }
        std::vector<ips_match> m(mv.size() / 6);
        for (size_t i = 0; i < m.size(); i++) {
            const uint32_t *x = &mv[6 * i];
            m[i] = ips_match{byte(x[0], "match kind"), byte(x[1], "match dims"), byte(x[2], "match negate"), x[3],
                             x[4], x[5]};
        }
        std::vector<ips_net6> n(nv.size() / 8);
        for (size_t i = 0; i < n.size(); i++)
            for (unsigned k = 0; k < 4; k++) {
                n[i].addr[k] = nv[8 * i + k];
                n[i].mask[k] = nv[8 * i + 4 + k];
            }
        ips_status st;
        char why[256] = "";
        program_ = ips_program_new(family_, raw.size(), raw.data(), first.size(), first.data(), len.data(), r.size(),
                                   r.data(), m.size(), m.data(), n.size(), n.data(), entry, &st, why, sizeof why);
        if (!program_)
            raise_status(st, std::string("invalid rule program: ") + why);
    }
    ~NativeProgram() { ips_program_free(program_); }
    NativeProgram(const NativeProgram &) = delete;
    NativeProgram &operator=(const NativeProgram &) = delete;

    py::tuple evaluate(py::object src, py::object dst, py::object proto, py::object dport, unsigned threads,
                       bool trace) {
        const bool v4 = family_ == IPS_INET;
        auto addr = [&](py::handle a, const char *what, py::ssize_t n) {
            if (v4)
                return column(a, std::string(what) + " (IPv4 addresses as uint32 in host order)", 'u', 4, 1, 0, n);
            return column(a, std::string(what) + " (IPv6 addresses as 16 bytes in network order)", 'u', 1, 2, 16, n);
        };
        py::array s = addr(src, "src", -1);
        py::ssize_t n = s.shape(0);
        py::array d = addr(dst, "dst", n);
        py::array p = column(proto, "proto (IP protocol numbers)", 'u', 1, 1, 0, n);
        py::array o = column(dport, "dport", 'u', 2, 1, 0, n);
        py::array_t<bool> verdict(n);
        py::array_t<int32_t> rule(n), mark_rule(n);
        const py::ssize_t traced = trace ? static_cast<py::ssize_t>(n_slots_) : 0;
        py::array_t<int32_t> slots({trace ? n : 0, traced, static_cast<py::ssize_t>(2)});
        size_t leased = 0;
        try {
            for (NativeSet *ns : natives_) {
                ns->begin_read();
                leased++;
            }
            // Under the GIL, with every set leased: the membership index can not
            // be rebuilt by two evaluations at once, nor go stale during one.
            ips_status st = ips_program_prepare_for(program_, static_cast<size_t>(n));
            if (st != IPS_OK && st != IPS_ERR_NOMEM)
                raise_status(st, "cannot prepare the program");
            {
                py::gil_scoped_release nogil;
                ips_program_eval_threads(program_, static_cast<size_t>(n), s.data(), d.data(),
                                         static_cast<const uint8_t *>(p.data()),
                                         static_cast<const uint16_t *>(o.data()),
                                         reinterpret_cast<uint8_t *>(verdict.mutable_data()), rule.mutable_data(),
                                         mark_rule.mutable_data(), traced ? slots.mutable_data() : nullptr,
                                         threads);
            }
        } catch (...) {
            for (size_t i = 0; i < leased; i++)
                natives_[i]->end_read();
            throw;
        }
        for (NativeSet *ns : natives_)
            ns->end_read();
        if (!trace)
            return py::make_tuple(verdict, rule, mark_rule, py::none());
        return py::make_tuple(verdict, rule, mark_rule, slots);
    }

    void set_mark_slots(const std::vector<uint32_t> &masks) {
        if (ips_program_set_mark_slots(program_, static_cast<unsigned>(masks.size()), masks.data()) != IPS_OK)
            throw py::value_error("mark slots: at most " + std::to_string(IPS_MAX_MARK_SLOTS) +
                                  " masks, none empty");
        n_slots_ = static_cast<unsigned>(masks.size());
    }

  private:
    py::list sets_;
    std::vector<NativeSet *> natives_;
    ips_family family_;
    ips_program *program_ = nullptr;
    unsigned n_slots_ = 0;
};

// `entry in s` straight from the type slot: the generic pybind11 dispatch
// costs more than parsing and probing together, and a single lookup from
// Python is a budgeted operation (bench/README.md).
int fast_contains(PyObject *self, PyObject *entry) {
    try {
        // The type check was done by Python (the slot is only on our types);
        // a simple-layout pybind11 instance keeps the C++ object pointer first.
        auto *inst = reinterpret_cast<py::detail::instance *>(self);
        NativeSet *ns = inst->simple_layout ? static_cast<NativeSet *>(inst->simple_value_holder[0])
                                            : py::handle(self).cast<NativeSet *>();
        return ns->contains(entry) ? 1 : 0;
    } catch (py::error_already_set &e) {
        e.restore();
    } catch (py::builtin_exception &e) {
        e.set_error();
    } catch (std::exception &e) {
        PyErr_SetString(PyExc_RuntimeError, e.what());
    }
    return -1;
}

// Member i of a sequence, parsed as an entry of the type (text: the member, when asked for).
// ValueError names the member the type cannot hold, or one that is not text.
ips_entry parse_member(ips_type t, ips_family f, py::sequence members, size_t i, std::string *text = nullptr) {
    py::handle item = members[i];
    Py_ssize_t len = 0;
    const char *chars = PyUnicode_Check(item.ptr()) ? PyUnicode_AsUTF8AndSize(item.ptr(), &len) : nullptr;
    if (!chars) {
        PyErr_Clear();
        throw py::value_error("member " + std::to_string(i) + " is not text");
    }
    ips_entry e;
    char why[IPS_REASON_MAX];
    if (ips_parse_entry(t, f, chars, static_cast<size_t>(len), &e, why, sizeof why) != IPS_OK)
        throw py::value_error("member '" + bounded(std::string(chars, static_cast<size_t>(len))) + "': " + why);
    if (text)
        text->assign(chars, static_cast<size_t>(len));
    return e;
}

// A set's members (ipset syntax) as nf_tables set elements, laid out as
// NFTA_SET_ELEM_LIST_ELEMENTS holds them: per member NFTA_LIST_ELEM {
// NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } }, the key's fields in network
// order, each padded to 4 bytes as nftables lays out a concatenation
// (address . inet_proto . inet_service [. address]). Every element has the
// same length, so the result is rows of that length. ValueError names the
// first member the kernel could not hold as the nftables backend types it
// (hash:net and ICMP type/code members are not keys of these types).
py::bytes nft_elements(const std::string &type, const std::string &family, py::sequence members) {
    ips_type t;
    if (ips_type_from_name(type.data(), type.size(), &t) != IPS_OK || t == IPS_HASH_NET)
        throw py::value_error("no nftables element keys for set type '" + bounded(type) + "'");
    const ips_family f = parse_family(family);
    const size_t alen = f == IPS_INET ? 4 : 16;
    const size_t klen = alen + (t == IPS_HASH_IP ? 0 : 8) + (t == IPS_HASH_IP_PORT_IP ? alen : 0);
    const size_t row = 12 + klen;
    const size_t n = static_cast<size_t>(py::len(members));
    std::string out(n * row, '\0');
    auto header = [](uint8_t *p, uint16_t len, uint16_t type) {
        std::memcpy(p, &len, 2);
        std::memcpy(p + 2, &type, 2);
    };
    const uint16_t nested = 0x8000; // NLA_F_NESTED
    for (size_t i = 0; i < n; i++) {
        std::string text;
        const ips_entry e = parse_member(t, f, members, i, &text);
        if (t != IPS_HASH_IP && (e.proto == 1 || e.proto == 58))
            throw py::value_error("member '" + bounded(text) + "': an ICMP type and code is not an nftables port");
        auto *p = reinterpret_cast<uint8_t *>(&out[i * row]);
        header(p, static_cast<uint16_t>(row), 1 | nested);          // NFTA_LIST_ELEM
        header(p + 4, static_cast<uint16_t>(row - 4), 1 | nested);  // NFTA_SET_ELEM_KEY
        header(p + 8, static_cast<uint16_t>(row - 8), 1);           // NFTA_DATA_VALUE
        uint8_t *k = p + 12;
        std::memcpy(k, e.ip, alen);
        if (t != IPS_HASH_IP) {
            k[alen] = e.proto;
            k[alen + 4] = static_cast<uint8_t>(e.port >> 8);
            k[alen + 5] = static_cast<uint8_t>(e.port & 0xFF);
            if (t == IPS_HASH_IP_PORT_IP)
                std::memcpy(k + alen + 8, e.ip2, alen);
        }
    }
    return py::bytes(out);
}

// A set's members (ipset syntax) as the kernel's ipset module reads them
// over netlink (include/uapi/linux/netfilter/ipset/ip_set.h): one
// IPSET_ATTR_DATA { IPSET_ATTR_IP { IPSET_ATTR_IPADDR_IPV4|6 }, ... } per
// member, nested attributes flagged NLA_F_NESTED and numbers in network
// order flagged NLA_F_NET_BYTEORDER, as the kernel requires: the port types
// add IPSET_ATTR_PORT and IPSET_ATTR_PROTO, hash:ip,port,ip IPSET_ATTR_IP2,
// hash:net IPSET_ATTR_CIDR and, for `nomatch`, IPSET_ATTR_CADT_FLAGS. The
// same parser as every other path reads the members; ValueError names the
// first one that is not a member of the type.
py::list ipset_data(const std::string &type, const std::string &family, py::sequence members) {
    ips_type t;
    if (ips_type_from_name(type.data(), type.size(), &t) != IPS_OK)
        throw py::value_error("not an ipset type: '" + bounded(type) + "'");
    const ips_family f = parse_family(family);
    const size_t alen = f == IPS_INET ? 4 : 16;
    const uint16_t nested = 0x8000, netorder = 0x4000;  // NLA_F_NESTED, NLA_F_NET_BYTEORDER
    auto attr = [](std::string &out, uint16_t kind, const void *data, size_t len) {
        const uint16_t size = static_cast<uint16_t>(4 + len);
        out.append(reinterpret_cast<const char *>(&size), 2);
        out.append(reinterpret_cast<const char *>(&kind), 2);
        out.append(static_cast<const char *>(data), len);
        out.append((4 - len % 4) % 4, '\0');
    };
    auto address = [&](std::string &out, uint16_t kind, const uint8_t *ip) {  // IPSET_ATTR_IP or _IP2
        std::string inner;
        attr(inner, static_cast<uint16_t>((f == IPS_INET ? 1 : 2) | netorder), ip, alen);  // IPSET_ATTR_IPADDR_IPV4|6
        attr(out, static_cast<uint16_t>(kind | nested), inner.data(), inner.size());
    };
    py::list out;
    const size_t n = static_cast<size_t>(py::len(members));
    for (size_t i = 0; i < n; i++) {
        const ips_entry e = parse_member(t, f, members, i);
        std::string data;
        address(data, 1, e.ip);  // IPSET_ATTR_IP
        if (t == IPS_HASH_NET) {
            attr(data, 3, &e.cidr, 1);  // IPSET_ATTR_CIDR
            if (e.nomatch) {
                const uint32_t flags = htonl(1u << 2);  // IPSET_FLAG_NOMATCH
                attr(data, static_cast<uint16_t>(8 | netorder), &flags, 4);  // IPSET_ATTR_CADT_FLAGS
            }
        } else if (t != IPS_HASH_IP) {
            const uint16_t port = htons(e.port);
            attr(data, static_cast<uint16_t>(4 | netorder), &port, 2);  // IPSET_ATTR_PORT
            attr(data, 7, &e.proto, 1);                                 // IPSET_ATTR_PROTO
            if (t == IPS_HASH_IP_PORT_IP)
                address(data, 20, e.ip2);  // IPSET_ATTR_IP2
        }
        std::string element;
        attr(element, static_cast<uint16_t>(7 | nested), data.data(), data.size());  // IPSET_ATTR_DATA
        out.append(py::bytes(element));
    }
    return out;
}

} // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "Native hash sets with the semantics of the kernel's ipset types (see csrc/).";

    py::class_<EntryIterator>(m, "_EntryIterator")
        .def("__iter__", [](py::object self) { return self; })
        .def("__next__", &EntryIterator::next);

    py::class_<NativeSet>(m, "IPSet", py::dynamic_attr())
        .def(py::init<const std::string &, const std::string &, uint64_t>(), py::arg("type"),
             py::arg("family") = "inet", py::kw_only(), py::arg("seed") = 0)
        .def_property_readonly("type", &NativeSet::type_name, "Kernel set type, e.g. 'hash:ip,port'.")
        .def_property_readonly("family", &NativeSet::family_str, "'inet' or 'inet6'.")
        .def_property_readonly("memory_bytes", &NativeSet::memory,
                               "Bytes the set owns: header, hash table and hash:net lookup index.")
        .def("__len__", &NativeSet::size)
        .def("__contains__", &NativeSet::contains, py::arg("entry"))
        .def("__iter__", [](py::object self) { return EntryIterator(self); })
        .def("add", &NativeSet::add, py::arg("entry"), py::arg("nomatch") = false,
             "Adds an entry in ipset syntax; returns True if it was new. In hash:net, re-adding a network "
             "updates its nomatch flag (as `ipset add -exist`).")
        .def("discard", &NativeSet::discard, py::arg("entry"),
             "Removes an entry if present; returns True if it was there.")
        .def("clear", &NativeSet::clear)
        .def("reserve", &NativeSet::reserve, py::arg("extra"),
             "Makes room for `extra` more entries so that adding them does not grow the table.")
        .def("contains_many", &NativeSet::contains_many,
             "contains_many(*columns) -> numpy.ndarray[bool]: batch membership; columns per type are "
             "(ip), (ip, proto, port) or (src, proto, port, dst).")
        .def("add_many", &NativeSet::add_many, py::arg("cidr") = py::none(),
             py::arg("nomatch") = false,
             "add_many(*columns, cidr=None, nomatch=False) -> int: batch add; all rows are checked first "
             "and a bad row changes nothing.")
        .def("discard_many", &NativeSet::discard_many, py::arg("cidr") = py::none(),
             "discard_many(*columns, cidr=None) -> int: batch remove; returns how many were present.");
    py::class_<NativeProgram>(m, "Program")
        .def(py::init<const std::string &, py::list, const Table &, const Table &, const Table &, const Table &,
                      uint32_t, const Table &>(),
             py::arg("family"), py::arg("sets"), py::arg("chain_first"), py::arg("chain_len"), py::arg("rules"),
             py::arg("matches"), py::arg("entry"), py::arg("nets"),
             "Program(family, sets, chain_first, chain_len, rules, matches, entry, nets): int64 arrays; rules [n, "
             "7] rows (target, chain, jump, mark, mark_mask, first_match, n_matches), matches [m, 6] rows (kind, "
             "dims, negate, set, value, value2), nets [k, 8] the IPv6 networks of address matches (4 address "
             "words, 4 mask words); see csrc/include/pyipset/evaluator.h.")
        .def("evaluate", &NativeProgram::evaluate, py::arg("src"), py::arg("dst"), py::arg("proto"),
             py::arg("dport"), py::arg("threads") = 0, py::arg("trace") = false,
             "evaluate(src, dst, proto, dport, threads=0) -> (verdict bool[], deciding rule int32[], last MARK "
             "rule int32[], slots: with trace=True int32[n, mark slots, 2], per slot the first MARK rule that set "
             "one of its bits and the JUMP rule that entered its chain, else None) for NEW flows; the GIL is "
             "released; threads=0 uses every core for large batches.")
        .def("set_mark_slots", &NativeProgram::set_mark_slots, py::arg("masks"),
             "set_mark_slots([mask, ...]): trace, per mask (at most 4), which MARK rule first set its bits.");

    // The evaluator's enums (evaluator.h), by the names RulePrograms use: the
    // Python side translates through these, never through numbers of its own.
    py::dict targets, match_kinds, dims, states;
    targets["ACCEPT"] = int(IPS_TARGET_ACCEPT);
    targets["DROP"] = int(IPS_TARGET_DROP);
    targets["RETURN"] = int(IPS_TARGET_RETURN);
    targets["JUMP"] = int(IPS_TARGET_JUMP);
    targets["MARK"] = int(IPS_TARGET_MARK);
    targets["NFLOG"] = int(IPS_TARGET_NFLOG);
    targets["GOTO"] = int(IPS_TARGET_GOTO);
    targets["DISPATCH"] = int(IPS_TARGET_DISPATCH);
    match_kinds["set"] = int(IPS_MATCH_SET);
    match_kinds["proto"] = int(IPS_MATCH_PROTO);
    match_kinds["dport"] = int(IPS_MATCH_DPORT);
    match_kinds["mark"] = int(IPS_MATCH_MARK);
    match_kinds["state"] = int(IPS_MATCH_STATE);
    match_kinds["limit"] = int(IPS_MATCH_LIMIT);
    match_kinds["addr"] = int(IPS_MATCH_ADDR);
    dims["src"] = int(IPS_DIMS_SRC);
    dims["dst"] = int(IPS_DIMS_DST);
    dims["dst,dst"] = int(IPS_DIMS_DST_DPORT);
    dims["src,dst,dst"] = int(IPS_DIMS_SRC_DPORT_DST);
    states["NEW"] = int(IPS_STATE_NEW);
    states["ESTABLISHED"] = int(IPS_STATE_ESTABLISHED);
    states["RELATED"] = int(IPS_STATE_RELATED);
    states["INVALID"] = int(IPS_STATE_INVALID);
    m.attr("TARGETS") = targets;
    m.attr("MATCH_KINDS") = match_kinds;
    m.attr("DIMS") = dims;
    m.attr("STATES") = states;

    m.def("nft_elements", &nft_elements, py::arg("type"), py::arg("family"), py::arg("members"),
          "nft_elements(type, family, members) -> bytes: the members as nf_tables set elements (rows of one "
          "length: per member NFTA_LIST_ELEM { NFTA_SET_ELEM_KEY { NFTA_DATA_VALUE key } }), fields in network "
          "order, each padded to 4 bytes; ValueError names the first member it cannot encode.");

    m.def("ipset_data", &ipset_data, py::arg("type"), py::arg("family"), py::arg("members"),
          "ipset_data(type, family, members) -> [bytes]: each member as the kernel's ipset module reads one over "
          "netlink (IPSET_ATTR_DATA { IPSET_ATTR_IP { address }, port and protocol, second address, prefix, "
          "nomatch }); ValueError names the first member the type cannot hold.");

    // A Python subclass gets a generic slot that calls __contains__ by name;
    // this puts the direct one back on it (pyipset.sets calls it).
    m.def("_use_fast_contains", [](py::type subclass) {
        auto *type = reinterpret_cast<PyTypeObject *>(subclass.ptr());
        if (!PyType_IsSubtype(type, reinterpret_cast<PyTypeObject *>(py::type::of<NativeSet>().ptr())) ||
            !type->tp_as_sequence)
            throw py::type_error("not a subclass of _core.IPSet");
        type->tp_as_sequence->sq_contains = fast_contains;
        PyType_Modified(type);
    });
}

#include "eqflow/json.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "eqflow/error.h"

namespace eqflow {

namespace {
const char* type_name(Json::Type t) {
    switch (t) {
        case Json::Type::null:
            return "null";
        case Json::Type::boolean:
            return "boolean";
        case Json::Type::number:
            return "number";
        case Json::Type::string:
            return "string";
        case Json::Type::array:
            return "array";
        case Json::Type::object:
            return "object";
    }
    return "?";
}

void escape_to(std::string& out, const std::string& s) {
    out += '"';
    for (unsigned char c : s) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
}

class Parser {
  public:
    explicit Parser(const std::string& text) : s_(text) {}

    Json parse_document() {
        Json v = parse_value(0);
        skip_ws();
        if (pos_ != s_.size()) fail("trailing characters");
        return v;
    }

  private:
    [[noreturn]] void fail(const char* what) {
        EQFLOW_THROW("JSON: " << what << " at byte " << pos_);
    }
    void skip_ws() {
        while (pos_ < s_.size() &&
               (s_[pos_] == ' ' || s_[pos_] == '\n' || s_[pos_] == '\r' || s_[pos_] == '\t'))
            ++pos_;
    }
    bool consume(const char* lit) {
        const size_t n = std::strlen(lit);
        if (s_.compare(pos_, n, lit) == 0) {
            pos_ += n;
            return true;
        }
        return false;
    }
    Json parse_value(int depth) {
        if (depth > 64) fail("nesting too deep");
        skip_ws();
        if (pos_ >= s_.size()) fail("unexpected end");
        const char c = s_[pos_];
        if (c == '{') return parse_object(depth);
        if (c == '[') return parse_array(depth);
        if (c == '"') return Json(parse_string());
        if (consume("true")) return Json(true);
        if (consume("false")) return Json(false);
        if (consume("null")) return Json(nullptr);
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail("unexpected character");
    }
    Json parse_number() {
        const size_t start = pos_;
        if (s_[pos_] == '-') ++pos_;
        auto digits = [&] {
            const size_t d0 = pos_;
            while (pos_ < s_.size() && s_[pos_] >= '0' && s_[pos_] <= '9') ++pos_;
            if (pos_ == d0) fail("malformed number");
        };
        digits();
        if (pos_ < s_.size() && s_[pos_] == '.') {
            ++pos_;
            digits();
        }
        if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
            ++pos_;
            if (pos_ < s_.size() && (s_[pos_] == '+' || s_[pos_] == '-')) ++pos_;
            digits();
        }
        const std::string tok = s_.substr(start, pos_ - start);
        return Json(std::strtod(tok.c_str(), nullptr));
    }
    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        while (true) {
            if (pos_ >= s_.size()) fail("unterminated string");
            const char c = s_[pos_++];
            if (c == '"') break;
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= s_.size()) fail("unterminated escape");
            const char e = s_[pos_++];
            switch (e) {
                case '"':
                    out += '"';
                    break;
                case '\\':
                    out += '\\';
                    break;
                case '/':
                    out += '/';
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    if (pos_ + 4 > s_.size()) fail("short \\u escape");
                    unsigned code = 0;
                    for (int i = 0; i < 4; ++i) {
                        const char h = s_[pos_++];
                        code <<= 4;
                        if (h >= '0' && h <= '9')
                            code |= static_cast<unsigned>(h - '0');
                        else if (h >= 'a' && h <= 'f')
                            code |= static_cast<unsigned>(h - 'a' + 10);
                        else if (h >= 'A' && h <= 'F')
                            code |= static_cast<unsigned>(h - 'A' + 10);
                        else
                            fail("bad \\u escape");
                    }
                    // UTF-8 encode (surrogate pairs are kept as two code units; enough here).
                    if (code < 0x80) {
                        out += static_cast<char>(code);
                    } else if (code < 0x800) {
                        out += static_cast<char>(0xC0 | (code >> 6));
                        out += static_cast<char>(0x80 | (code & 0x3F));
                    } else {
                        out += static_cast<char>(0xE0 | (code >> 12));
                        out += static_cast<char>(0x80 | ((code >> 6) & 0x3F));
                        out += static_cast<char>(0x80 | (code & 0x3F));
                    }
                    break;
                }
                default:
                    fail("unknown escape");
            }
        }
        return out;
    }
    Json parse_array(int depth) {
        ++pos_;
        Json arr = Json::array();
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == ']') {
            ++pos_;
            return arr;
        }
        while (true) {
            arr.push_back(parse_value(depth + 1));
            skip_ws();
            if (pos_ >= s_.size()) fail("unterminated array");
            if (s_[pos_] == ',') {
                ++pos_;
                continue;
            }
            if (s_[pos_] == ']') {
                ++pos_;
                break;
            }
            fail("expected ',' or ']'");
        }
        return arr;
    }
    Json parse_object(int depth) {
        ++pos_;
        // Members are collected with a hash set of their keys: a header of many keys parses in
        // linear time (checking each key against the object so far took minutes on 200,000).
        std::vector<std::pair<std::string, Json>> members;
        std::unordered_set<std::string> keys;
        skip_ws();
        if (pos_ < s_.size() && s_[pos_] == '}') {
            ++pos_;
            return Json::object();
        }
        while (true) {
            skip_ws();
            if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a key");
            std::string key = parse_string();
            skip_ws();
            if (pos_ >= s_.size() || s_[pos_] != ':') fail("expected ':'");
            ++pos_;
            if (!keys.insert(key).second) fail("duplicate key");
            members.emplace_back(std::move(key), parse_value(depth + 1));
            skip_ws();
            if (pos_ >= s_.size()) fail("unterminated object");
            if (s_[pos_] == ',') {
                ++pos_;
                continue;
            }
            if (s_[pos_] == '}') {
                ++pos_;
                break;
            }
            fail("expected ',' or '}'");
        }
        return Json::object_of(std::move(members));
    }

    const std::string& s_;
    size_t pos_ = 0;
};
}  // namespace

#define EQFLOW_JSON_EXPECT(t) \
    EQFLOW_CHECK(type_ == (t), "JSON: expected " << type_name(t) << ", found " << type_name(type_))

bool Json::as_bool() const {
    EQFLOW_JSON_EXPECT(Type::boolean);
    return bool_;
}
double Json::as_number() const {
    EQFLOW_JSON_EXPECT(Type::number);
    return num_;
}
int64_t Json::as_int() const {
    EQFLOW_JSON_EXPECT(Type::number);
    EQFLOW_CHECK(
        std::isfinite(num_) && std::floor(num_) == num_ && std::fabs(num_) <= 9007199254740992.0,
        "JSON: expected an integer, found " << num_);
    return static_cast<int64_t>(num_);
}
const std::string& Json::as_string() const {
    EQFLOW_JSON_EXPECT(Type::string);
    return str_;
}
const std::vector<Json>& Json::as_array() const {
    EQFLOW_JSON_EXPECT(Type::array);
    return arr_;
}
const std::vector<std::pair<std::string, Json>>& Json::as_object() const {
    EQFLOW_JSON_EXPECT(Type::object);
    return obj_;
}

Json Json::object_of(std::vector<std::pair<std::string, Json>> members) {
    std::unordered_set<std::string> keys;
    for (const auto& kv : members)
        EQFLOW_CHECK(keys.insert(kv.first).second,
                     "JSON object: duplicate key '" << kv.first << "'");
    Json j = Json::object();
    j.obj_ = std::move(members);
    return j;
}

bool Json::contains(const std::string& key) const {
    if (type_ != Type::object) return false;
    for (const auto& kv : obj_)
        if (kv.first == key) return true;
    return false;
}

const Json& Json::at(const std::string& key) const {
    EQFLOW_JSON_EXPECT(Type::object);
    for (const auto& kv : obj_)
        if (kv.first == key) return kv.second;
    EQFLOW_THROW("JSON: missing key '" << key << "'");
}

Json& Json::operator[](const std::string& key) {
    if (type_ == Type::null) type_ = Type::object;
    EQFLOW_JSON_EXPECT(Type::object);
    for (auto& kv : obj_)
        if (kv.first == key) return kv.second;
    obj_.emplace_back(key, Json());
    return obj_.back().second;
}

void Json::push_back(Json value) {
    if (type_ == Type::null) type_ = Type::array;
    EQFLOW_JSON_EXPECT(Type::array);
    arr_.push_back(std::move(value));
}

size_t Json::size() const {
    if (type_ == Type::array) return arr_.size();
    if (type_ == Type::object) return obj_.size();
    return 0;
}

std::string Json::dump(int indent) const {
    std::string out;
    dump_to(out, indent, 0);
    return out;
}

void Json::dump_to(std::string& out, int indent, int level) const {
    auto newline = [&](int lvl) {
        if (indent < 0) return;
        out += '\n';
        out.append(static_cast<size_t>(indent * lvl), ' ');
    };
    switch (type_) {
        case Type::null:
            out += "null";
            break;
        case Type::boolean:
            out += bool_ ? "true" : "false";
            break;
        case Type::number: {
            if (!std::isfinite(num_)) {
                out += "null";
            } else if (std::floor(num_) == num_ && std::fabs(num_) < 1e15) {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.0f", num_);
                out += buf;
            } else {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%.17g", num_);
                out += buf;
            }
            break;
        }
        case Type::string:
            escape_to(out, str_);
            break;
        case Type::array:
            out += '[';
            for (size_t i = 0; i < arr_.size(); ++i) {
                if (i) out += ',';
                newline(level + 1);
                arr_[i].dump_to(out, indent, level + 1);
            }
            if (!arr_.empty()) newline(level);
            out += ']';
            break;
        case Type::object:
            out += '{';
            for (size_t i = 0; i < obj_.size(); ++i) {
                if (i) out += ',';
                newline(level + 1);
                escape_to(out, obj_[i].first);
                out += indent < 0 ? ":" : ": ";
                obj_[i].second.dump_to(out, indent, level + 1);
            }
            if (!obj_.empty()) newline(level);
            out += '}';
            break;
    }
}

Json Json::parse(const std::string& text) {
    return Parser(text).parse_document();
}

}  // namespace eqflow

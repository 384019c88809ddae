// eqflow/json.h: a small JSON value with a strict parser and a writer. Enough for metrics
// files, training logs and safetensors headers; not a general-purpose library.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

class EQFLOW_API Json {
  public:
    enum class Type { null, boolean, number, string, array, object };

    Json() = default;
    Json(std::nullptr_t) {}
    Json(bool b) : type_(Type::boolean), bool_(b) {}
    Json(double x) : type_(Type::number), num_(x) {}
    Json(int x) : type_(Type::number), num_(x) {}
    Json(int64_t x) : type_(Type::number), num_(static_cast<double>(x)) {}
    Json(const char* s) : type_(Type::string), str_(s) {}
    Json(std::string s) : type_(Type::string), str_(std::move(s)) {}

    static Json array() {
        Json j;
        j.type_ = Type::array;
        return j;
    }
    static Json object() {
        Json j;
        j.type_ = Type::object;
        return j;
    }

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::null; }
    bool is_number() const { return type_ == Type::number; }
    bool is_string() const { return type_ == Type::string; }
    bool is_array() const { return type_ == Type::array; }
    bool is_object() const { return type_ == Type::object; }

    // Accessors throw Error on a type mismatch, naming the expected and actual type.
    bool as_bool() const;
    double as_number() const;
    int64_t as_int() const;  // throws when the number is not an integer
    const std::string& as_string() const;
    const std::vector<Json>& as_array() const;
    const std::vector<std::pair<std::string, Json>>& as_object() const;

    bool contains(const std::string& key) const;
    const Json& at(const std::string& key) const;  // throws when missing
    Json& operator[](const std::string& key);      // inserts (object only)
    void push_back(Json value);                    // array only
    size_t size() const;

    // Compact when indent < 0, else pretty-printed. Numbers use up to 17 significant digits;
    // non-finite numbers are written as null (JSON has no NaN).
    std::string dump(int indent = -1) const;

    // An object of these members, in this order, in linear time (operator[] searches); throws
    // Error when a key repeats.
    static Json object_of(std::vector<std::pair<std::string, Json>> members);

    // Strict parse; throws Error with the byte offset of the problem.
    static Json parse(const std::string& text);

  private:
    void dump_to(std::string& out, int indent, int level) const;

    Type type_ = Type::null;
    bool bool_ = false;
    double num_ = 0.0;
    std::string str_;
    std::vector<Json> arr_;
    std::vector<std::pair<std::string, Json>> obj_;  // keeps insertion order
};

}  // namespace eqflow

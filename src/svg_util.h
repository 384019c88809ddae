// src/svg_util.h: what the SVG figures (plot_svg.cpp, plot_ramachandran.cpp) share.
#pragma once

#include <ostream>
#include <string>

namespace eqflow {

// The <svg> element of a width x height figure (12-point sans-serif text) and a white background.
// The caller closes it with "</svg>\n".
inline void svg_begin(std::ostream& s, double width, double height) {
    s << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << width << "\" height=\"" << height
      << "\" font-family=\"sans-serif\" font-size=\"12\">\n";
    s << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
}

// Text with the characters that XML reserves replaced by entities.
inline std::string svg_escape(const std::string& text) {
    std::string out;
    for (char c : text) {
        if (c == '<')
            out += "&lt;";
        else if (c == '>')
            out += "&gt;";
        else if (c == '&')
            out += "&amp;";
        else
            out += c;
    }
    return out;
}

}  // namespace eqflow

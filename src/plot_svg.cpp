// The energy-histogram figure as a self-contained SVG (no plotting library needed).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include "eqflow/figures.h"
#include "eqflow/io.h"
#include "svg_util.h"

namespace eqflow {

namespace {

std::string num(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.2f", x);
    return buf;
}

std::string label(double x) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", x);
    return buf;
}

// A "nice" tick spacing of about span / 6.
double tick_step(double span) {
    const double raw = span / 6.0;
    const double p = std::pow(10.0, std::floor(std::log10(raw)));
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (m * p >= raw) return m * p;
    return 10.0 * p;
}

}  // namespace

void write_energy_histogram_svg(const std::string& path, const EnergyHistogram& hist,
                                const std::string& title) {
    const double W = 640, H = 420, left = 70, right = 20, top = 40, bottom = 55;
    const double pw = W - left - right, ph = H - top - bottom;
    const double x0 = hist.edges.front(), x1 = hist.edges.back();
    double ymax = 0.0;
    for (const auto* h : {&hist.data, &hist.samples, &hist.reweighted})
        for (double v : *h)
            if (std::isfinite(v)) ymax = std::max(ymax, v);
    if (!(ymax > 0)) ymax = 1.0;
    ymax *= 1.08;
    auto X = [&](double x) { return left + (x - x0) / (x1 - x0) * pw; };
    auto Y = [&](double y) { return top + ph - y / ymax * ph; };

    std::ostringstream s;
    svg_begin(s, W, H);
    s << "<text x=\"" << W / 2 << "\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">"
      << svg_escape(title) << "</text>\n";
    // Axes, ticks and labels.
    s << "<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
      << "\" fill=\"none\" stroke=\"black\"/>\n";
    const double dx = tick_step(x1 - x0);
    for (double t = std::ceil(x0 / dx) * dx; t <= x1 + 1e-9 * dx; t += dx) {
        s << "<line x1=\"" << num(X(t)) << "\" y1=\"" << num(top + ph) << "\" x2=\"" << num(X(t))
          << "\" y2=\"" << num(top + ph + 5) << "\" stroke=\"black\"/>\n";
        s << "<text x=\"" << num(X(t)) << "\" y=\"" << num(top + ph + 18)
          << "\" text-anchor=\"middle\">" << label(std::fabs(t) < 1e-12 * dx ? 0.0 : t)
          << "</text>\n";
    }
    const double dy = tick_step(ymax);
    for (double t = 0; t <= ymax; t += dy) {
        s << "<line x1=\"" << num(left - 5) << "\" y1=\"" << num(Y(t)) << "\" x2=\"" << num(left)
          << "\" y2=\"" << num(Y(t)) << "\" stroke=\"black\"/>\n";
        s << "<text x=\"" << num(left - 8) << "\" y=\"" << num(Y(t) + 4)
          << "\" text-anchor=\"end\">" << label(t) << "</text>\n";
    }
    s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 12
      << "\" text-anchor=\"middle\">reduced energy u = E/kT</text>\n";
    s << "<text x=\"16\" y=\"" << top + ph / 2
      << "\" text-anchor=\"middle\" transform=\"rotate(-90 16 " << top + ph / 2
      << ")\">density</text>\n";
    // One step line per histogram.
    struct Series {
        const std::vector<double>* h;
        const char* color;
        const char* name;
        const char* dash;
    };
    const Series series[] = {{&hist.data, "black", "data (test set)", ""},
                             {&hist.samples, "#1f77b4", "flow samples", ""},
                             {&hist.reweighted, "#ff7f0e", "reweighted samples", "6,3"}};
    for (const Series& se : series) {
        std::ostringstream pts;
        for (size_t k = 0; k < se.h->size(); ++k) {
            const double v = std::isfinite((*se.h)[k]) ? (*se.h)[k] : 0.0;
            pts << num(X(hist.edges[k])) << "," << num(Y(v)) << " " << num(X(hist.edges[k + 1]))
                << "," << num(Y(v)) << " ";
        }
        s << "<polyline fill=\"none\" stroke=\"" << se.color << "\" stroke-width=\"1.8\""
          << (*se.dash ? std::string(" stroke-dasharray=\"") + se.dash + "\"" : std::string())
          << " points=\"" << pts.str() << "\"/>\n";
    }
    // Legend.
    double ly = top + 16;
    for (const Series& se : series) {
        s << "<line x1=\"" << num(left + pw - 170) << "\" y1=\"" << num(ly - 4) << "\" x2=\""
          << num(left + pw - 145) << "\" y2=\"" << num(ly - 4) << "\" stroke=\"" << se.color
          << "\" stroke-width=\"2\""
          << (*se.dash ? std::string(" stroke-dasharray=\"") + se.dash + "\"" : std::string())
          << "/>\n";
        s << "<text x=\"" << num(left + pw - 140) << "\" y=\"" << num(ly) << "\">" << se.name
          << "</text>\n";
        ly += 18;
    }
    s << "</svg>\n";
    write_file_atomic(path, s.str());
}

}  // namespace eqflow

// The Ramachandran figure (eqflow/figures.h) as a self-contained SVG.
#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>

#include "eqflow/error.h"
#include "eqflow/figures.h"
#include "eqflow/io.h"
#include "svg_util.h"

namespace eqflow {

namespace {
constexpr double kPiRad = 3.14159265358979323846;
}  // namespace

std::string ramachandran_svg(const std::vector<RamachandranPanel>& panels, int bins) {
    EQFLOW_CHECK(!panels.empty(), "Ramachandran figure: no data");
    EQFLOW_CHECK(bins >= 2 && bins <= 1000,
                 "Ramachandran figure: bins must be 2..1000, got " << bins);
    const double size = 300.0, margin = 50.0, gap = 70.0;
    const double width = margin + panels.size() * (size + gap), height = size + 2 * margin;
    std::ostringstream svg;
    svg_begin(svg, width, height);
    const double cell = size / bins;
    for (size_t p = 0; p < panels.size(); ++p) {
        const RamachandranPanel& panel = panels[p];
        EQFLOW_CHECK(
            panel.phi.size() == panel.psi.size() &&
                (panel.log_w.empty() || panel.log_w.size() == panel.phi.size()),
            "Ramachandran figure: panel '" << panel.title << "' has mismatched phi/psi/weights");
        std::vector<double> hist(static_cast<size_t>(bins * bins), 0.0);
        double max_lw = 0.0;
        if (!panel.log_w.empty()) {
            max_lw = -std::numeric_limits<double>::infinity();
            for (double v : panel.log_w)
                if (std::isfinite(v)) max_lw = std::max(max_lw, v);
        }
        for (size_t i = 0; i < panel.phi.size(); ++i) {
            if (!std::isfinite(panel.phi[i]) || !std::isfinite(panel.psi[i])) continue;
            const double w = panel.log_w.empty()             ? 1.0
                             : std::isfinite(panel.log_w[i]) ? std::exp(panel.log_w[i] - max_lw)
                                                             : 0.0;
            auto bin = [&](double a) {
                const int b = static_cast<int>(std::floor((a + kPiRad) / (2 * kPiRad) * bins));
                return std::clamp(b, 0, bins - 1);
            };
            hist[bin(panel.psi[i]) * bins + bin(panel.phi[i])] += w;
        }
        double hmax = 0.0;
        for (double h : hist) hmax = std::max(hmax, h);
        const double x0 = margin + p * (size + gap), y0 = margin;
        svg << "<g>\n<text x=\"" << x0 + size / 2 << "\" y=\"" << y0 - 12
            << "\" text-anchor=\"middle\">" << panel.title << " (" << panel.phi.size()
            << ")</text>\n";
        svg << "<rect x=\"" << x0 << "\" y=\"" << y0 << "\" width=\"" << size << "\" height=\""
            << size << "\" fill=\"white\" stroke=\"black\"/>\n";
        // Shade by free energy -ln(h / hmax) over 0..8 kT: dark blue (0) to pale yellow (8).
        for (int j = 0; j < bins; ++j) {
            for (int i = 0; i < bins; ++i) {
                const double h = hist[j * bins + i];
                if (h <= 0.0 || hmax <= 0.0) continue;
                const double f = std::min(-std::log(h / hmax) / 8.0, 1.0);
                const int r = static_cast<int>(20 + 235 * f), g = static_cast<int>(40 + 200 * f),
                          b = static_cast<int>(140 + 40 * f);
                // psi increases upwards.
                svg << "<rect x=\"" << x0 + i * cell << "\" y=\"" << y0 + (bins - 1 - j) * cell
                    << "\" width=\"" << cell + 0.05 << "\" height=\"" << cell + 0.05
                    << "\" fill=\"rgb(" << r << "," << g << "," << b << ")\"/>\n";
            }
        }
        svg << "<line x1=\"" << x0 + size / 2 << "\" y1=\"" << y0 << "\" x2=\"" << x0 + size / 2
            << "\" y2=\"" << y0 + size << "\" stroke=\"gray\" stroke-dasharray=\"4 3\"/>\n";
        for (int t = 0; t <= 2; ++t) {
            const char* label = t == 0 ? "-180" : t == 1 ? "0" : "180";
            svg << "<text x=\"" << x0 + t * size / 2 << "\" y=\"" << y0 + size + 16
                << "\" text-anchor=\"middle\">" << label << "</text>\n";
            svg << "<text x=\"" << x0 - 6 << "\" y=\"" << y0 + size - t * size / 2 + 4
                << "\" text-anchor=\"end\">" << label << "</text>\n";
        }
        svg << "<text x=\"" << x0 + size / 2 << "\" y=\"" << y0 + size + 34
            << "\" text-anchor=\"middle\">phi (deg)</text>\n";
        svg << "<text x=\"" << x0 - 36 << "\" y=\"" << y0 + size / 2
            << "\" text-anchor=\"middle\" transform=\"rotate(-90 " << x0 - 36 << " "
            << y0 + size / 2 << ")\">psi (deg)</text>\n</g>\n";
    }
    svg << "</svg>\n";
    return svg.str();
}

void write_ramachandran_svg(const std::string& path, const std::vector<RamachandranPanel>& panels,
                            int bins) {
    write_file_atomic(path, ramachandran_svg(panels, bins));
}

}  // namespace eqflow

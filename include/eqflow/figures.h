// eqflow/figures.h: figures as self-contained SVG files (no plotting library needed). The
// energy-histogram figure (write_energy_histogram_svg) is declared with EnergyHistogram in
// eqflow/flow.h.
#pragma once

#include <string>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

// A Ramachandran figure (SVG): one panel per data set, a 2-D histogram of (phi, psi) over
// [-pi, pi)^2 with `bins` bins per axis, shaded by -ln(density) (white: empty), optional log
// weights per sample (reweighted samples). Written atomically.
struct RamachandranPanel {
    std::string title;
    std::vector<double> phi, psi;  // radians
    std::vector<double> log_w;     // empty: uniform weights
};
EQFLOW_API std::string ramachandran_svg(const std::vector<RamachandranPanel>& panels,
                                        int bins = 60);
EQFLOW_API void write_ramachandran_svg(const std::string& path,
                                       const std::vector<RamachandranPanel>& panels, int bins = 60);

}  // namespace eqflow

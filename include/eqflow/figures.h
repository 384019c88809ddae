// eqflow/figures.h: figures as self-contained SVG files (no plotting library needed): the
// energy histograms of a flow's evaluation and the Ramachandran figure of a molecule.
#pragma once

#include <string>
#include <vector>

#include "eqflow/export.h"
#include "eqflow/metrics.h"

namespace eqflow {

// An SVG figure of the three histograms (step lines, axes, legend); written atomically.
EQFLOW_API void write_energy_histogram_svg(const std::string& path, const EnergyHistogram& hist,
                                           const std::string& title);

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

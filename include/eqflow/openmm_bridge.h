// eqflow/openmm_bridge.h: OpenMM, the reference force field and the MD engine of `aldp` (only
// with EQFLOW_OPENMM; else these throw an Error saying that OpenMM is needed, and
// openmm_available() is false). eqflow's own force field is in eqflow/force_field.h.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "eqflow/export.h"

namespace eqflow {

EQFLOW_API bool openmm_available();

// Energies and forces through an OpenMM Context on the given platform ("Reference": double).
class EQFLOW_API OpenMMEvaluator {
  public:
    explicit OpenMMEvaluator(const std::string& system_xml_path,
                             const std::string& platform = "Reference");
    ~OpenMMEvaluator();
    OpenMMEvaluator(const OpenMMEvaluator&) = delete;
    OpenMMEvaluator& operator=(const OpenMMEvaluator&) = delete;
    int n_atoms() const;
    // x [B][n][3] nm -> energy [B] kJ/mol, forces [B][n][3] (nullable). groups: bit mask of force
    // groups (-1: all).
    void evaluate(const double* x, int64_t B, double* energy, double* forces, int groups = -1);
    // The System re-serialized by OpenMM (for the round-trip test).
    std::string serialize() const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

struct MdOptions {
    int64_t samples = 0;         // frames to record
    double temperature = 300.0;  // K
    double timestep_ps = 0.001;  // 1 fs
    double friction_per_ps = 1.0;
    int64_t steps_per_frame = 1000;        // one frame per ps
    int64_t equilibration_steps = 100000;  // 100 ps
    uint64_t seed = 0;                     // 0 is replaced by 1 (OpenMM treats 0 as "random")
    std::string platform = "Reference";    // or "CPU" (falls back to Reference when missing); for
                                           // 22 atoms the Reference platform is the faster one
    int threads = 0;                       // CPU platform threads (0: OpenMM's default, all cores)
    std::function<void(int64_t done, int64_t total)> progress;
};
struct MdStats {
    double mean_potential = 0.0;  // kJ/mol over the recorded frames
    double mean_kinetic = 0.0;    // kJ/mol over the recorded frames
    int dof = 0;  // degrees of freedom of the kinetic energy (3n - 3 with CMMotionRemover)
    std::vector<double> potential, kinetic;  // per recorded frame, kJ/mol
    std::string platform;
};
// Langevin MD (LangevinMiddleIntegrator) from x0 [n][3] nm: frames [samples][n][3] (nm).
EQFLOW_API std::vector<double> openmm_langevin_md(const std::string& system_xml_path,
                                                  const std::vector<double>& x0,
                                                  const MdOptions& options,
                                                  MdStats* stats = nullptr);

}  // namespace eqflow

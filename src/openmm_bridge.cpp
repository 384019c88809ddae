// OpenMM as the reference force field and the MD engine (eqflow/openmm_bridge.h). With
// EQFLOW_HAVE_OPENMM this talks to OpenMM's C++ API; without it every entry point throws an Error
// saying that OpenMM is needed.
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

#include "eqflow/error.h"
#include "eqflow/force_field.h"
#include "eqflow/io.h"
#include "eqflow/openmm_bridge.h"

#if defined(EQFLOW_HAVE_OPENMM)
#include <OpenMM.h>
#include <openmm/serialization/XmlSerializer.h>
#endif

namespace eqflow {

#if defined(EQFLOW_HAVE_OPENMM)

namespace {
std::unique_ptr<OpenMM::System> load_system(const std::string& path) {
    // OpenMM's XML reader recurses once per level of nesting: eqflow checks the size, balance
    // and depth first, so a hostile file is a one-line error instead of a stack overflow.
    const std::string text = read_file(path);
    try {
        check_system_xml_limits(text);
    } catch (const Error& e) {
        EQFLOW_THROW(path << ": " << e.what());
    }
    std::istringstream in(text);
    try {
        return std::unique_ptr<OpenMM::System>(
            OpenMM::XmlSerializer::deserialize<OpenMM::System>(in));
    } catch (const std::exception& e) {
        EQFLOW_THROW("OpenMM could not read " << path << ": " << e.what());
    }
}

// The Reference platform is built in; the others (CPU) are plugins, loaded once on first need.
OpenMM::Platform& platform_by_name(const std::string& name, bool fallback_to_reference) {
    if (name != "Reference") {
        static std::once_flag once;
        std::call_once(once, [] {
            try {
                OpenMM::Platform::loadPluginsFromDirectory(
                    OpenMM::Platform::getDefaultPluginsDirectory());
            } catch (const std::exception&) {
                // A missing plugin folder only leaves the Reference platform.
            }
        });
    }
    try {
        return OpenMM::Platform::getPlatformByName(name);
    } catch (const std::exception& e) {
        if (!fallback_to_reference)
            EQFLOW_THROW("OpenMM platform '" << name << "' is not available: " << e.what());
        return OpenMM::Platform::getPlatformByName("Reference");
    }
}

void set_positions(OpenMM::Context& context, const double* x, int n) {
    std::vector<OpenMM::Vec3> pos(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) pos[i] = OpenMM::Vec3(x[3 * i], x[3 * i + 1], x[3 * i + 2]);
    context.setPositions(pos);
}
}  // namespace

bool openmm_available() {
    return true;
}

struct OpenMMEvaluator::Impl {
    std::unique_ptr<OpenMM::System> system;
    std::unique_ptr<OpenMM::VerletIntegrator> integrator;
    std::unique_ptr<OpenMM::Context> context;
};

OpenMMEvaluator::OpenMMEvaluator(const std::string& path, const std::string& platform)
    : impl_(new Impl) {
    impl_->system = load_system(path);
    impl_->integrator = std::make_unique<OpenMM::VerletIntegrator>(0.001);
    try {
        impl_->context = std::make_unique<OpenMM::Context>(*impl_->system, *impl_->integrator,
                                                           platform_by_name(platform, false));
    } catch (const Error&) {
        throw;
    } catch (const std::exception& e) {
        EQFLOW_THROW("OpenMM context for " << path << ": " << e.what());
    }
}

OpenMMEvaluator::~OpenMMEvaluator() = default;

int OpenMMEvaluator::n_atoms() const {
    return impl_->system->getNumParticles();
}

void OpenMMEvaluator::evaluate(const double* x, int64_t B, double* energy, double* forces,
                               int groups) {
    const int n = n_atoms();
    const int types = OpenMM::State::Energy | (forces ? OpenMM::State::Forces : 0);
    for (int64_t b = 0; b < B; ++b) {
        set_positions(*impl_->context, x + b * n * 3, n);
        const OpenMM::State state = impl_->context->getState(types, false, groups);
        if (energy) energy[b] = state.getPotentialEnergy();
        if (forces) {
            const std::vector<OpenMM::Vec3>& f = state.getForces();
            for (int i = 0; i < n; ++i)
                for (int a = 0; a < 3; ++a) forces[(b * n + i) * 3 + a] = f[i][a];
        }
    }
}

std::string OpenMMEvaluator::serialize() const {
    std::ostringstream out;
    OpenMM::XmlSerializer::serialize<OpenMM::System>(impl_->system.get(), "System", out);
    return out.str();
}

std::vector<double> openmm_langevin_md(const std::string& path, const std::vector<double>& x0,
                                       const MdOptions& opt, MdStats* stats) {
    std::unique_ptr<OpenMM::System> system = load_system(path);
    const int n = system->getNumParticles();
    EQFLOW_CHECK(static_cast<int>(x0.size()) == 3 * n,
                 "MD: start has " << x0.size() / 3 << " atoms, the System " << n);
    EQFLOW_CHECK(opt.samples > 0 && opt.steps_per_frame > 0 && opt.equilibration_steps >= 0,
                 "MD: samples and steps per frame must be positive");
    EQFLOW_CHECK(opt.temperature > 0 && opt.timestep_ps > 0 && opt.friction_per_ps >= 0,
                 "MD: bad integrator settings");
    OpenMM::LangevinMiddleIntegrator integrator(opt.temperature, opt.friction_per_ps,
                                                opt.timestep_ps);
    // OpenMM's seed is an int and 0 means "pick one at random": keep runs reproducible.
    const int seed = static_cast<int>(opt.seed % 2147483646ull) + 1;
    integrator.setRandomNumberSeed(seed);
    OpenMM::Platform& platform = platform_by_name(opt.platform, true);
    std::unique_ptr<OpenMM::Context> context;
    try {
        std::map<std::string, std::string> properties;
        if (opt.threads > 0 && platform.getName() == "CPU")
            properties["Threads"] = std::to_string(opt.threads);
        context = std::make_unique<OpenMM::Context>(*system, integrator, platform, properties);
    } catch (const std::exception& e) {
        EQFLOW_THROW("OpenMM context for " << path << ": " << e.what());
    }
    set_positions(*context, x0.data(), n);
    context->setVelocitiesToTemperature(opt.temperature, seed);

    if (stats) *stats = MdStats{};
    if (opt.progress) opt.progress(0, opt.samples);
    integrator.step(static_cast<int>(opt.equilibration_steps));
    std::vector<double> frames(static_cast<size_t>(opt.samples * n * 3));
    double sum_pot = 0.0, sum_kin = 0.0;
    for (int64_t s = 0; s < opt.samples; ++s) {
        integrator.step(static_cast<int>(opt.steps_per_frame));
        const OpenMM::State state =
            context->getState(OpenMM::State::Positions | OpenMM::State::Energy);
        const std::vector<OpenMM::Vec3>& p = state.getPositions();
        for (int i = 0; i < n; ++i)
            for (int a = 0; a < 3; ++a) frames[(s * n + i) * 3 + a] = p[i][a];
        EQFLOW_CHECK(std::isfinite(state.getPotentialEnergy()),
                     "MD: the simulation blew up at frame " << s);
        sum_pot += state.getPotentialEnergy();
        sum_kin += state.getKineticEnergy();
        if (stats) {
            stats->potential.push_back(state.getPotentialEnergy());
            stats->kinetic.push_back(state.getKineticEnergy());
        }
        if (opt.progress) opt.progress(s + 1, opt.samples);
    }
    if (stats) {
        stats->mean_potential = sum_pot / opt.samples;
        stats->mean_kinetic = sum_kin / opt.samples;
        bool cm_remover = false;
        for (int f = 0; f < system->getNumForces(); ++f)
            cm_remover |=
                dynamic_cast<const OpenMM::CMMotionRemover*>(&system->getForce(f)) != nullptr;
        stats->dof = 3 * n - system->getNumConstraints() - (cm_remover ? 3 : 0);
        stats->platform = platform.getName();
    }
    return frames;
}

#else  // !EQFLOW_HAVE_OPENMM

namespace {
[[noreturn]] void no_openmm(const char* what) {
    EQFLOW_THROW(
        what << " needs OpenMM: eqflow was built without it (install libopenmm-dev and reconfigure "
                "with -DEQFLOW_OPENMM=ON)");
}
}  // namespace

bool openmm_available() {
    return false;
}

struct OpenMMEvaluator::Impl {};
OpenMMEvaluator::OpenMMEvaluator(const std::string&, const std::string&) {
    no_openmm("the OpenMM reference");
}
OpenMMEvaluator::~OpenMMEvaluator() = default;
int OpenMMEvaluator::n_atoms() const {
    return 0;
}
void OpenMMEvaluator::evaluate(const double*, int64_t, double*, double*, int) {
    no_openmm("the OpenMM reference");
}
std::string OpenMMEvaluator::serialize() const {
    return {};
}
std::vector<double> openmm_langevin_md(const std::string&, const std::vector<double>&,
                                       const MdOptions&, MdStats*) {
    no_openmm("molecular dynamics");
}

#endif

}  // namespace eqflow

// eqflow/molecule.h: everything molecular in one include (the `aldp` system of docs/design.md
// section 9). Each part has its own header:
//   eqflow/force_field.h        the force field: OpenMM System XML reader, energies and forces,
//                               the alanine-dipeptide parameters and atom types
//   eqflow/molecule_io.h        PDB files and where the alanine-dipeptide data is found
//   eqflow/molecule_analysis.h  dihedrals, chirality and mirror images, free-energy differences
//   eqflow/figures.h            the Ramachandran figure (SVG)
//   eqflow/openmm_bridge.h      OpenMM as the reference and the MD engine
#pragma once

#include "eqflow/figures.h"
#include "eqflow/force_field.h"
#include "eqflow/molecule_analysis.h"
#include "eqflow/molecule_io.h"
#include "eqflow/openmm_bridge.h"

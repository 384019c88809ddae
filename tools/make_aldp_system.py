#!/usr/bin/env python3
"""Generate the alanine-dipeptide system of eqflow (docs/design.md section 9).

Writes data/aldp/aldp.pdb (22 atoms, ACE-ALA-NME, minimised) and data/aldp/aldp_system.xml (the
serialized OpenMM System: Amber ff99SB-ILDN + OBC implicit solvent, no cutoff, no constraints).

Needs OpenMM's Python bindings (Debian: python3-simtk, run with /usr/bin/python3). The structure is
built here from standard internal coordinates (bond lengths, angles, dihedrals), no external
structure file, then minimised with the force field itself.

Atom order (the order of the published alanine-dipeptide data sets):
   0 HH31  1 CH3  2 HH32  3 HH33  4 C  5 O                     ACE
   6 N  7 H  8 CA  9 HA  10 CB  11 HB1  12 HB2  13 HB3  14 C  15 O   ALA
  16 N  17 H  18 CH3  19 HH31  20 HH32  21 HH33                NME
Backbone dihedrals: phi = (4, 6, 8, 14), psi = (6, 8, 14, 16).

Each force gets its own force group (its index in the System), so energies of single terms can
be compared one by one.
"""
import argparse
import os
import sys

import numpy as np

try:
    import openmm
    import openmm.app as app
    import openmm.unit as unit
except ImportError:  # Debian's python3-simtk 7.7 also provides the `openmm` package
    sys.exit("needs OpenMM's Python bindings (Debian: apt-get install python3-simtk; use /usr/bin/python3)")


def place(a, b, c, bond, angle_deg, dihedral_deg):
    """Position of atom d bonded to c with |cd| = bond, angle bcd and dihedral abcd (NeRF)."""
    angle, dihedral = np.radians(angle_deg), np.radians(dihedral_deg)
    bc = c - b
    bc /= np.linalg.norm(bc)
    n = np.cross(b - a, bc)
    n /= np.linalg.norm(n)
    m = np.cross(n, bc)
    d_local = np.array([-bond * np.cos(angle), bond * np.sin(angle) * np.cos(dihedral),
                        bond * np.sin(angle) * np.sin(dihedral)])
    return c + d_local[0] * bc + d_local[1] * m + d_local[2] * n


def dihedral(p0, p1, p2, p3):
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1n = b1 / np.linalg.norm(b1)
    v = b0 - np.dot(b0, b1n) * b1n
    w = b2 - np.dot(b2, b1n) * b1n
    return np.degrees(np.arctan2(np.dot(np.cross(b1n, v), w), np.dot(v, w)))


def chirality(n, ca, c, cb):
    """Sign of (N - CA) . ((C - CA) x (CB - CA)): the handedness rule of eqflow/molecule.h."""
    return np.sign(np.dot(n - ca, np.cross(c - ca, cb - ca)))


def reference_l_chirality():
    """The sign for L amino acids, read from a protein structure shipped with OpenMM."""
    pdb = app.PDBFile(os.path.join(os.path.dirname(app.__file__), "data", "test.pdb"))
    pos = np.array(pdb.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    signs = set()
    for res in pdb.topology.residues():
        atoms = {a.name: a.index for a in res.atoms()}
        if all(k in atoms for k in ("N", "CA", "C", "CB")):
            signs.add(chirality(pos[atoms["N"]], pos[atoms["CA"]], pos[atoms["C"]], pos[atoms["CB"]]))
    assert len(signs) == 1, f"mixed chirality in the reference protein: {signs}"
    return signs.pop()


def build(phi=-80.0, psi=75.0, cb_offset=120.0):
    # Standard Amber/Engh-Huber internal coordinates, nm and degrees; minimisation refines them.
    x = np.zeros((22, 3))
    x[1] = [0.0, 0.0, 0.0]                      # ACE CH3
    x[4] = [0.1522, 0.0, 0.0]                   # ACE C
    x[6] = x[4] + 0.1335 * np.array([np.cos(np.radians(180 - 116.6)), np.sin(np.radians(180 - 116.6)), 0.0])
    x[8] = place(x[1], x[4], x[6], 0.1449, 121.9, 180.0)    # CA, omega = 180
    x[14] = place(x[4], x[6], x[8], 0.1522, 110.4, phi)     # C
    x[16] = place(x[6], x[8], x[14], 0.1335, 116.6, psi)    # NME N
    x[18] = place(x[8], x[14], x[16], 0.1449, 121.9, 180.0)  # NME CH3
    x[5] = place(x[8], x[6], x[4], 0.1229, 122.9, 0.0)      # ACE O, cis to CA
    x[7] = place(x[5], x[4], x[6], 0.1010, 119.8, 180.0)    # H on N
    x[15] = place(x[18], x[16], x[14], 0.1229, 122.9, 0.0)  # ALA O
    x[17] = place(x[15], x[14], x[16], 0.1010, 119.8, 180.0)
    x[10] = place(x[4], x[6], x[8], 0.1526, 110.5, phi + cb_offset)   # CB
    x[9] = place(x[4], x[6], x[8], 0.1090, 109.5, phi - cb_offset)    # HA
    for k, dih in zip((0, 2, 3), (180.0, 60.0, -60.0)):
        x[k] = place(x[6], x[4], x[1], 0.1090, 109.5, dih)
    for k, dih in zip((11, 12, 13), (180.0, 60.0, -60.0)):
        x[k] = place(x[6], x[8], x[10], 0.1090, 109.5, dih)
    for k, dih in zip((19, 20, 21), (180.0, 60.0, -60.0)):
        x[k] = place(x[14], x[16], x[18], 0.1090, 109.5, dih)
    return x


def topology():
    top = app.Topology()
    chain = top.addChain()
    el = app.element
    spec = [("ACE", [("HH31", el.hydrogen), ("CH3", el.carbon), ("HH32", el.hydrogen), ("HH33", el.hydrogen),
                     ("C", el.carbon), ("O", el.oxygen)]),
            ("ALA", [("N", el.nitrogen), ("H", el.hydrogen), ("CA", el.carbon), ("HA", el.hydrogen),
                     ("CB", el.carbon), ("HB1", el.hydrogen), ("HB2", el.hydrogen), ("HB3", el.hydrogen),
                     ("C", el.carbon), ("O", el.oxygen)]),
            ("NME", [("N", el.nitrogen), ("H", el.hydrogen), ("C", el.carbon), ("H1", el.hydrogen),
                     ("H2", el.hydrogen), ("H3", el.hydrogen)])]
    atoms = []
    for resname, names in spec:
        res = top.addResidue(resname, chain)
        for name, element in names:
            atoms.append(top.addAtom(name, element, res))
    bonds = [(0, 1), (1, 2), (1, 3), (1, 4), (4, 5), (4, 6), (6, 7), (6, 8), (8, 9), (8, 10), (10, 11),
             (10, 12), (10, 13), (8, 14), (14, 15), (14, 16), (16, 17), (16, 18), (18, 19), (18, 20), (18, 21)]
    for i, j in bonds:
        top.addBond(atoms[i], atoms[j])
    return top


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default=os.path.join(here, "..", "data", "aldp"))
    args = parser.parse_args()

    l_sign = reference_l_chirality()
    top = topology()
    x = build()
    if chirality(x[6], x[8], x[14], x[10]) != l_sign:  # wrong hand: swap the CB and HA positions
        x = build(cb_offset=-120.0)
    assert chirality(x[6], x[8], x[14], x[10]) == l_sign

    ff = app.ForceField("amber99sbildn.xml", "amber99_obc.xml")
    system = ff.createSystem(top, nonbondedMethod=app.NoCutoff, constraints=None, rigidWater=False)
    for i, force in enumerate(system.getForces()):
        force.setForceGroup(i)

    integrator = openmm.VerletIntegrator(0.001)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x * unit.nanometer)
    e0 = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    openmm.LocalEnergyMinimizer.minimize(context, 1e-3, 0)
    state = context.getState(getEnergy=True, getPositions=True)
    e1 = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    pos = np.array(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))
    pos -= pos.mean(axis=0)
    assert chirality(pos[6], pos[8], pos[14], pos[10]) == l_sign

    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "aldp.pdb"), "w") as f:
        app.PDBFile.writeFile(top, pos * 10.0 * unit.angstrom, f)  # PDB precision: 1e-4 nm
    with open(os.path.join(args.out_dir, "aldp_system.xml"), "w") as f:
        f.write(openmm.XmlSerializer.serialize(system))
    print(f"OpenMM {openmm.__version__}: E built {e0:.3f} -> minimised {e1:.3f} kJ/mol; "
          f"phi {dihedral(pos[4], pos[6], pos[8], pos[14]):.1f}, psi {dihedral(pos[6], pos[8], pos[14], pos[16]):.1f} deg; "
          f"L-chirality sign {l_sign:+.0f}; forces: {[type(f).__name__ for f in system.getForces()]}")


if __name__ == "__main__":
    main()

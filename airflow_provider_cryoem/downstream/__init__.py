"""The downstream half of live SPA, as plain functions the DAG calls (no Airflow import here).

particle_batches: extracted particles → 2D batches (particles_split<k>.star)
class2d:          relion_refine 2D classification of one batch, parsed into class rows
class_selection:  score classes (engines/class_selection.py), write the selected particles for 3D
initial_model:    the refinement's starting map (low-passed given map; Relion 3.1 SGD command)
refine3d:         auto-refine, mask, post-processing; refinements of particle subsets → B-factor
reachable_fsc:    ground truth for synthetic sets: resolution at the true angles, FSC against the true map
synthetic_particles: particle sets with known angles and planted junk, projected by relion_project
"""

"""The downstream half of live SPA, as plain functions the DAG calls (no Airflow import here).

particle_batches: extracted particles → 2D batches (particles_split<k>.star)
class2d:          relion_refine 2D classification of one batch, parsed into class rows
class_selection:  score classes (engines/class_selection.py), write the selected particles for 3D
refine3d:         initial model, 3D classification, auto-refine, mask, post-processing
bfactor:          refinements of particle subsets → Rosenthal–Henderson B-factor
"""

"""Running the study on a cluster: a one-machine SLURM to try the cluster path on (`leanmed.cluster.local_slurm`)."""

/* test_slurm_identity.c - how crux reads its identity in the places Slurm puts a
 * process: an srun task, the batch script itself, and an mpirun started inside a job
 * (test_slurm.c runs the same for real in a local Slurm; this runs everywhere). */
#include <criterion/criterion.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bootstrap.h"
#include "crux.h"

/* The batch script carries SLURM_PROCID=0 and SLURM_NTASKS=<job's tasks> but no step
 * id: a crux program started there is a singleton, not rank 0 waiting for others. */
Test(slurm_identity, batch_script_is_not_a_task)
{
    static const char *const vars[] = { "SLURM_STEP_ID", "SLURM_STEPID", "SLURM_STEP_NODELIST",
                                        "SLURM_STEP_RESV_PORTS", "OMPI_COMM_WORLD_RANK",
                                        "PMI_RANK", "PMIX_RANK", NULL };
    for (int i = 0; vars[i]; i++)
        unsetenv(vars[i]);
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "4", 1);
    setenv("SLURM_LOCALID", "0", 1);
    setenv("SLURM_JOB_ID", "77", 1);
    setenv("SLURM_JOB_NODELIST", "node[1-2]", 1);
    struct crux_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.rank = cfg.size = cfg.local_rank = -1;
    struct crux_identity id;
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "single");
    cr_assert_eq(id.size, 1);
    setenv("SLURM_STEP_ID", "0", 1); /* inside an srun step the same variables are a rank */
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "slurm");
    cr_assert_eq(id.size, 4);
    cr_assert_str_eq(id.root_host, "node1");
}

/* mpirun in a Slurm job starts one daemon per node with srun; its ranks inherit the
 * daemons' SLURM_PROCID/NTASKS, so Open MPI's own (different) size wins. */
Test(slurm_identity, mpirun_in_a_job_uses_open_mpi_identity)
{
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_NTASKS", "2", 1);
    setenv("SLURM_JOB_ID", "78", 1);
    setenv("SLURM_STEP_NODELIST", "node[1-2]", 1);
    setenv("OMPI_COMM_WORLD_RANK", "3", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
    struct crux_config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.rank = cfg.size = cfg.local_rank = -1;
    struct crux_identity id;
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_ERR_ARG, "mpirun gives no rendezvous: CRUX_ROOT needed");
    strcpy(cfg.root, "node1:4000");
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "ompi");
    cr_assert_eq(id.rank, 3);
    cr_assert_eq(id.size, 4);
    cr_assert_eq(id.local_rank, 1);
    /* mpirun's own node runs its ranks in the batch step: same identity rules, same key */
    uint64_t key = id.job_key;
    unsetenv("SLURM_STEP_ID");
    setenv("SLURM_PROCID", "0", 1);
    setenv("SLURM_NTASKS", "4", 1);
    setenv("OMPI_COMM_WORLD_RANK", "0", 1);
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "ompi");
    cr_assert_eq(id.rank, 0);
    cr_assert_eq(id.job_key, key, "ranks in the batch step and in srun's daemon step must agree on the key");
    setenv("SLURM_STEP_ID", "0", 1);
    setenv("SLURM_PROCID", "1", 1);
    setenv("SLURM_NTASKS", "2", 1);
    setenv("OMPI_COMM_WORLD_SIZE", "2", 1); /* srun-launched MPI program: both agree */
    setenv("OMPI_COMM_WORLD_RANK", "1", 1);
    cr_assert_eq(crux_identity_resolve(&cfg, &id), CRUX_SUCCESS);
    cr_assert_str_eq(id.source, "slurm");
    cr_assert_eq(id.rank, 1);
}

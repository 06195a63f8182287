/* hello_allreduce.c - the smallest crux program: every rank contributes its rank
 * number, everyone gets the sum.
 *
 *   cc hello_allreduce.c $(pkg-config --cflags --libs crux) -o hello
 *   crux-run -n 4 ./hello
 */
#include <stdio.h>

#include <crux.h>

int main(int argc, char **argv)
{
    int rank, size, rc;
    if ((rc = crux_init(&argc, &argv)) != CRUX_SUCCESS) {
        fprintf(stderr, "crux_init: %s\n", crux_error_string(rc));
        return 1;
    }
    crux_comm_rank(CRUX_COMM_WORLD, &rank);
    crux_comm_size(CRUX_COMM_WORLD, &size);

    double mine[2] = { rank, 1.0 }, sum[2];
    rc = crux_allreduce(mine, sum, 2, CRUX_DOUBLE, CRUX_SUM, CRUX_COMM_WORLD);
    if (rc != CRUX_SUCCESS) {
        fprintf(stderr, "rank %d: crux_allreduce: %s\n", rank, crux_error_string(rc));
        crux_abort(CRUX_COMM_WORLD, rc);
    }
    printf("rank %d of %d: sum of ranks = %g (expected %d), ranks counted = %g\n", rank, size,
           sum[0], size * (size - 1) / 2, sum[1]);
    int ok = sum[0] == size * (size - 1) / 2 && sum[1] == size;
    crux_finalize();
    return ok ? 0 : 1;
}

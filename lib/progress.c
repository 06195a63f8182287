/* progress.c - polling the transports, and the spin-then-block wait every call uses.
 *
 * With more ranks than cores (common on small nodes) pure spinning burns the
 * scheduler slice the peer needs (LIMITS.md: 4 ms per call); so we spin for
 * ctx->spin_us, then sleep inside the transport (futex / epoll) until data moves.
 */
#include <time.h>

#include "crux_internal.h"

double crux_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double crux_wtime(void) { return crux_now(); }

int crux_progress(struct crux_ctx *ctx)
{
    int rc = CRUX_SUCCESS;
    for (int i = 0; i < ctx->ntps; i++) {
        int r = ctx->tps[i]->ops->progress(ctx->tps[i]);
        if (r != CRUX_SUCCESS && rc == CRUX_SUCCESS)
            rc = r;
    }
    return rc;
}

int crux_progress_block(struct crux_ctx *ctx, int timeout_ms)
{
    if (ctx->ntps == 1)
        return ctx->tps[0]->ops->block(ctx->tps[0], timeout_ms);
    /* Several transports cannot share one sleep: take short naps on each in turn. */
    int nap = timeout_ms < 1 ? timeout_ms : 1;
    for (int i = 0; i < ctx->ntps; i++) {
        int rc = ctx->tps[i]->ops->block(ctx->tps[i], i == 0 ? nap : 0);
        if (rc != CRUX_SUCCESS)
            return rc;
    }
    return CRUX_SUCCESS;
}

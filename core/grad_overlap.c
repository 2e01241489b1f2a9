/* Gradient all-reduce on a communication thread: see grad_overlap.h. */
#include "grad_overlap.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

typedef struct {
    size_t offset, n;
} range;

struct cdcd_grad_overlap {
    cdcd_dist *dist;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    /* under mu */
    range ranges[CDCD_GRAD_OVERLAP_MAX_RANGES];
    int posted, summed; /* ranges handed over / summed this step */
    int quit, failed;
    char err[256];
    double busy_s;
    float *grads;
};

static void *comm_main(void *arg) {
    cdcd_grad_overlap *o = arg;
    pthread_mutex_lock(&o->mu);
    for (;;) {
        while (!o->quit && o->summed == o->posted) pthread_cond_wait(&o->work, &o->mu);
        if (o->quit) break;
        range r = o->ranges[o->summed];
        float *g = o->grads;
        int skip = o->failed; /* after a failure the ranks no longer match: no more calls */
        pthread_mutex_unlock(&o->mu);
        char e[256] = "";
        double t0 = cdcd_now_s();
        int rc = skip ? 0 : o->dist->ops->allreduce_sum_f32(o->dist, g + r.offset, r.n, e, sizeof e);
        double dt = cdcd_now_s() - t0;
        pthread_mutex_lock(&o->mu);
        o->busy_s += dt;
        if (rc != 0 && !o->failed) {
            o->failed = 1;
            snprintf(o->err, sizeof o->err, "%s", e);
        }
        o->summed++;
        pthread_cond_signal(&o->done);
    }
    pthread_mutex_unlock(&o->mu);
    return NULL;
}

cdcd_grad_overlap *cdcd_grad_overlap_create(cdcd_dist *d, char *err, size_t errlen) {
    if (!d->threads_serialized) {
        snprintf(err, errlen, "this MPI does not allow calls from a second thread (MPI_THREAD_SERIALIZED)");
        return NULL;
    }
    cdcd_grad_overlap *o = calloc(1, sizeof *o);
    if (!o) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    o->dist = d;
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->work, NULL);
    pthread_cond_init(&o->done, NULL);
    if (pthread_create(&o->thread, NULL, comm_main, o) != 0) {
        snprintf(err, errlen, "cannot start the communication thread");
        pthread_cond_destroy(&o->done);
        pthread_cond_destroy(&o->work);
        pthread_mutex_destroy(&o->mu);
        free(o);
        return NULL;
    }
    return o;
}

void cdcd_grad_overlap_begin(cdcd_grad_overlap *o, float *grads) {
    pthread_mutex_lock(&o->mu);
    o->grads = grads;
    o->posted = o->summed = 0;
    o->failed = 0;
    o->err[0] = '\0';
    o->busy_s = 0;
    pthread_mutex_unlock(&o->mu);
}

void cdcd_grad_overlap_post(void *arg, size_t offset, size_t n) {
    cdcd_grad_overlap *o = arg;
    pthread_mutex_lock(&o->mu);
    if (o->posted < CDCD_GRAD_OVERLAP_MAX_RANGES) {
        o->ranges[o->posted++] = (range){offset, n};
        pthread_cond_signal(&o->work);
    } else if (!o->failed) {
        o->failed = 1; /* every rank has the same count, so every rank fails here */
        snprintf(o->err, sizeof o->err, "more than %d gradient ranges in one step", CDCD_GRAD_OVERLAP_MAX_RANGES);
    }
    pthread_mutex_unlock(&o->mu);
}

int cdcd_grad_overlap_finish(cdcd_grad_overlap *o, double *busy_s, char *err, size_t errlen) {
    pthread_mutex_lock(&o->mu);
    while (o->summed < o->posted) pthread_cond_wait(&o->done, &o->mu);
    int failed = o->failed;
    if (failed) snprintf(err, errlen, "%s", o->err);
    if (busy_s) *busy_s = o->busy_s;
    pthread_mutex_unlock(&o->mu);
    return failed ? -1 : 0;
}

void cdcd_grad_overlap_free(cdcd_grad_overlap *o) {
    if (!o) return;
    pthread_mutex_lock(&o->mu);
    o->quit = 1;
    pthread_cond_signal(&o->work);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->thread, NULL);
    pthread_cond_destroy(&o->done);
    pthread_cond_destroy(&o->work);
    pthread_mutex_destroy(&o->mu);
    free(o);
}

/* cdcd train --fits-from-stdin: see train_control.h. */
#include "train_control.h"

#include <cJSON.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "schedule_json.h"

/* One line from fd (without its newline) into a malloc'd buffer, within timeout_s. 0, or -1
 * with err. Reads byte by byte: the reply is the only thing on the channel, so nothing past
 * its newline may be swallowed into a buffer the next request would not see. */
static int read_line(int fd, int timeout_s, char **out, char *err, size_t errlen) {
    size_t len = 0, cap = 4096;
    char *buf = malloc(cap);
    if (!buf) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    double deadline = cdcd_now_s() + timeout_s;
    for (;;) {
        double left = deadline - cdcd_now_s();
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        int pr = left > 0 ? poll(&pf, 1, (int)(left * 1000) + 1) : 0;
        if (pr < 0 && errno == EINTR) continue; /* a SIGUSR1/2: acted on at the next step */
        if (pr <= 0) {
            snprintf(err, errlen, "no reply from cdcdd on stdin within %d s", timeout_s);
            break;
        }
        char ch;
        ssize_t got = read(fd, &ch, 1);
        if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (got <= 0) {
            snprintf(err, errlen, "the control channel (stdin) closed while waiting for cdcdd's reply");
            break;
        }
        if (ch == '\n') {
            buf[len] = '\0';
            *out = buf;
            return 0;
        }
        if (len + 2 > cap) {
            if (cap >= CDCD_CONTROL_LINE_MAX) {
                snprintf(err, errlen, "a control line is longer than %u bytes", CDCD_CONTROL_LINE_MAX);
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                snprintf(err, errlen, "out of memory");
                break;
            }
            buf = nb, cap *= 2;
        }
        buf[len++] = ch;
    }
    free(buf);
    return -1;
}

int cdcd_control_refit(void *ctx, cdcd_schedule *s, int64_t step, char *err, size_t errlen) {
    cdcd_control *c = ctx;
    char *sched = cdcd_schedule_to_json(s), *line = NULL;
    if (!sched) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    fprintf(c->report, "{\"type\":\"refit\",\"step\":%lld,\"schedule\":%s}\n", (long long)step, sched);
    fflush(c->report);
    free(sched);
    if (read_line(c->in_fd, c->timeout_s, &line, err, errlen) != 0) return -1;
    int rc = -1;
    cJSON *o = cJSON_Parse(line);
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type"), *at = cJSON_GetObjectItemCaseSensitive(o, "step"),
                *why = cJSON_GetObjectItemCaseSensitive(o, "error"),
                *arr = cJSON_GetObjectItemCaseSensitive(o, "schedule");
    if (!cJSON_IsObject(o) || !cJSON_IsString(type) || strcmp(type->valuestring, "schedule") != 0 ||
        !cJSON_IsNumber(at)) {
        snprintf(err, errlen, "the control line is not a schedule reply: %.120s", line);
    } else if (at->valuedouble != (double)step) {
        snprintf(err, errlen, "the schedule reply is for step %.0f, not %lld", at->valuedouble, (long long)step);
    } else if (cJSON_IsString(why)) {
        cdcd_warn("schedule refit at step %lld: cdcdd has no fit (%.200s); keeping the current one", (long long)step,
                  why->valuestring);
        rc = 0;
    } else if (cdcd_schedule_from_json(s, arr) != 0) {
        snprintf(err, errlen, "the schedule in cdcdd's reply is malformed or out of range");
    } else {
        rc = 1;
    }
    cJSON_Delete(o);
    free(line);
    return rc;
}

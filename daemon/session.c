/* Browser sessions: see session.h. */
#include "session.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

int cdcdd_sessions_create(cdcdd_sessions *s, double now, char *id, size_t idlen) {
    unsigned char raw[CDCDD_SESSION_ID_BYTES];
    if (idlen < 2 * sizeof raw + 1 || getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return -1;
    int pick = 0;
    for (int i = 0; i < CDCDD_SESSION_MAX; i++) {
        if (!s->slot[i].id[0] || s->slot[i].expires <= now) {
            pick = i;
            break;
        }
        if (s->slot[i].expires < s->slot[pick].expires) pick = i;
    }
    cdcdd_session_slot *sl = &s->slot[pick];
    for (size_t i = 0; i < sizeof raw; i++) snprintf(sl->id + 2 * i, 3, "%02x", raw[i]);
    sl->expires = now + CDCDD_SESSION_LIFETIME_S;
    memcpy(id, sl->id, sizeof sl->id);
    return 0;
}

int cdcdd_sessions_valid(const cdcdd_sessions *s, const char *id, double now) {
    if (!s || !id || strlen(id) != 2 * CDCDD_SESSION_ID_BYTES) return 0;
    int ok = 0;
    for (int i = 0; i < CDCDD_SESSION_MAX; i++) {
        const cdcdd_session_slot *sl = &s->slot[i];
        if (!sl->id[0]) continue;
        unsigned char diff = 0;
        for (int k = 0; k < 2 * CDCDD_SESSION_ID_BYTES; k++) diff |= (unsigned char)(sl->id[k] ^ id[k]);
        ok |= diff == 0 && sl->expires > now;
    }
    return ok;
}

void cdcdd_sessions_clear(cdcdd_sessions *s) { memset(s, 0, sizeof *s); }

int cdcdd_cookie_value(const char *header, const char *name, char *out, size_t outlen) {
    size_t n = strlen(name);
    const char *p = header;
    while (p && *p) {
        while (*p == ' ' || *p == ';') p++;
        const char *end = strchr(p, ';');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > n && strncmp(p, name, n) == 0 && p[n] == '=') {
            size_t v = len - n - 1;
            if (v >= outlen) return 0;
            memcpy(out, p + n + 1, v);
            out[v] = '\0';
            return 1;
        }
        p = end;
    }
    return 0;
}

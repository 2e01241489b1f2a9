/* Browser sessions: short-lived random ids handed out by an authenticated POST /session as
 * an HttpOnly, SameSite=Strict cookie, so that EventSource (which cannot send headers) and
 * the dashboard's GETs authenticate without the token ever being put in a URL. A cookie
 * authenticates reads only; writes still need the bearer token. A fixed table on the loop
 * thread: when it is full the session closest to expiry is replaced. */
#ifndef CDCDD_SESSION_H
#define CDCDD_SESSION_H

#include <stddef.h>

#define CDCDD_SESSION_LIFETIME_S 900 /* seconds a session cookie is valid (Max-Age) */
#define CDCDD_SESSION_MAX 64         /* sessions kept at once */
#define CDCDD_SESSION_ID_BYTES 32    /* random bytes; the id is their hex (64 characters) */
#define CDCDD_SESSION_COOKIE "cdcdd_session"

typedef struct {
    char id[2 * CDCDD_SESSION_ID_BYTES + 1]; /* "" = free */
    double expires;                          /* monotonic seconds */
} cdcdd_session_slot;

typedef struct cdcdd_sessions {
    cdcdd_session_slot slot[CDCDD_SESSION_MAX];
} cdcdd_sessions;

/* A new session valid until now + CDCDD_SESSION_LIFETIME_S; its id is written to id
 * (at least 2 * CDCDD_SESSION_ID_BYTES + 1 bytes). 0, or -1 when no randomness is available. */
int cdcdd_sessions_create(cdcdd_sessions *s, double now, char *id, size_t idlen);
/* 1 when id names a live session (compared in constant time per slot). */
int cdcdd_sessions_valid(const cdcdd_sessions *s, const char *id, double now);
/* Forgets every session (the token changed). */
void cdcdd_sessions_clear(cdcdd_sessions *s);
/* Finds cookie `name` in a Cookie header and copies its value into out. 1 found, 0 not. */
int cdcdd_cookie_value(const char *header, const char *name, char *out, size_t outlen);

#endif

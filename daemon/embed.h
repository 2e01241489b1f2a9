/* Files compiled into the daemon (see embed.c): SQL migrations and openapi.yaml. */
#ifndef CDCDD_EMBED_H
#define CDCDD_EMBED_H

#include <stddef.h>

typedef struct {
    int version;      /* PRAGMA user_version after this migration */
    const char *name; /* file name under sql/ */
    const char *sql;  /* NUL-terminated script */
} cdcdd_migration;

/* In ascending version order, versions 1, 2, ... without gaps. */
extern const cdcdd_migration cdcdd_migrations[];
extern const int cdcdd_migration_count;

/* The repository's openapi.yaml (NUL-terminated); *len gets its length without the NUL. */
const char *cdcdd_openapi_yaml(size_t *len);

#endif

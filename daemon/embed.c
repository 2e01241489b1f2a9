/* Files compiled into cdcdd: the SQL migrations (sql/NNN_*.sql) and the OpenAPI document.
 *
 * They are pulled in with the assembler's .incbin (paths relative to the repository root,
 * where make runs the compiler), each followed by a NUL byte so it can be used as a C
 * string. Compiling them in means the daemon never has to find sql/ at run time, and the
 * schema it applies is exactly the one in the repository.
 *
 * To add a migration: write sql/NNN_name.sql (NNN = the next user_version) and append it to
 * both the CDCDD_EMBED list and cdcdd_migrations[] below. Never edit a released one. */
#include "embed.h"

#define CDCDD_EMBED(sym, file)                                                            \
    __asm__(".pushsection .rodata\n"                                                      \
            ".global " #sym "\n"                                                          \
            ".type " #sym ", @object\n"                                                   \
            ".balign 16\n" #sym ":\n"                                                     \
            ".incbin \"" file "\"\n"                                                      \
            ".byte 0\n"                                                                   \
            ".global " #sym "_end\n" #sym "_end:\n"                                       \
            ".popsection\n");                                                             \
    extern const char sym[];                                                              \
    extern const char sym##_end[]

CDCDD_EMBED(cdcdd_embed_sql_001, "sql/001_init.sql");
CDCDD_EMBED(cdcdd_embed_sql_002, "sql/002_periodic_stories.sql");
CDCDD_EMBED(cdcdd_embed_sql_003, "sql/003_run_ids.sql");
CDCDD_EMBED(cdcdd_embed_sql_004, "sql/004_run_note.sql");
CDCDD_EMBED(cdcdd_embed_openapi, "openapi.yaml");

const cdcdd_migration cdcdd_migrations[] = {
    {1, "001_init.sql", cdcdd_embed_sql_001},
    {2, "002_periodic_stories.sql", cdcdd_embed_sql_002},
    {3, "003_run_ids.sql", cdcdd_embed_sql_003},
    {4, "004_run_note.sql", cdcdd_embed_sql_004},
};
const int cdcdd_migration_count = (int)(sizeof cdcdd_migrations / sizeof cdcdd_migrations[0]);

const char *cdcdd_openapi_yaml(size_t *len) {
    /* _end points past the trailing NUL */
    if (len) *len = (size_t)(cdcdd_embed_openapi_end - cdcdd_embed_openapi) - 1;
    return cdcdd_embed_openapi;
}

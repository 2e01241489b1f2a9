/* Value parsers of the settings (options.c): integers, byte sizes, listen addresses, comma
 * lists, trimming. Pure functions, no state. */
#ifndef CDCDD_OPTIONS_PARSE_H
#define CDCDD_OPTIONS_PARSE_H

#include <stddef.h>
#include <stdint.h>

/* Parses a whole decimal integer. 0, or -1 on junk/overflow. */
int cdcdd_parse_i64(const char *v, int64_t *out);
/* Parses "123", "64K", "1M" (K/M/G/T, optionally KB/KiB: powers of 1024). 0 or -1. */
int cdcdd_parse_bytes(const char *v, uint64_t *out);
/* Splits a listen value into host and port (port < 0 when absent). 0 or -1. */
int cdcdd_parse_listen(const char *v, char *host, size_t hostlen, int *port);
/* Removes surrounding whitespace in place; returns the first non-space character. */
char *cdcdd_trim(char *s);
/* 1 when the comma-separated list contains item (ASCII case-insensitive, spaces around
 * items ignored, item given with its length). */
int cdcdd_list_contains(const char *list, const char *item, size_t item_len);

#endif

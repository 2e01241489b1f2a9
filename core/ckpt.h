/* Checkpoint container: one versioned binary file of named sections.
 *
 * Layout (little-endian):
 *   header   "CDCDCKPT" | u32 version | u32 n_sections | u64 toc_offset
 *   data     each section's bytes, 64-byte aligned
 *   toc      n_sections x { char name[48] | u64 offset | u64 bytes }
 *   trailer  32-byte SHA-256 of everything before it | "CKPTEND\0"
 * Written atomically: path.tmp, fsync, rename over path, fsync of the directory, so a
 * crash leaves either the old file or the new one. Loading checks magic, version, every
 * offset and size against the file size, and the SHA-256, so a truncated or corrupt file
 * is refused with a message saying which check failed.
 * Sections are found by name and a reader ignores the ones it does not know, so adding an
 * optional section (the trainer's "vocab", say) keeps the version; the version changes only
 * when a reader of the previous one could not read the file. */
#ifndef CDCD_CKPT_H
#define CDCD_CKPT_H

#include <stddef.h>
#include <stdint.h>

#define CDCD_CKPT_MAGIC "CDCDCKPT"
#define CDCD_CKPT_VERSION 1u
#define CDCD_CKPT_MAX_SECTIONS 64
#define CDCD_CKPT_NAME_LEN 48

typedef struct cdcd_ckpt_writer cdcd_ckpt_writer;
typedef struct cdcd_ckpt_reader cdcd_ckpt_reader;

/* Starts a checkpoint that will be written to path on commit. NULL on error (errno set). */
cdcd_ckpt_writer *cdcd_ckpt_writer_new(const char *path);
/* Adds a section. The data is copied by reference: it must stay valid until commit.
 * Returns 0, or -1 (too many sections, name too long, duplicate). */
int cdcd_ckpt_add(cdcd_ckpt_writer *w, const char *name, const void *data, size_t bytes);
/* Writes, fsyncs and renames into place; frees w in every case. On success fills the file
 * size and its SHA-256 hex (65 bytes with the NUL) when the pointers are non-NULL.
 * Returns 0, or -1 with a message in err (the old file at path, if any, is untouched). */
int cdcd_ckpt_commit(cdcd_ckpt_writer *w, uint64_t *bytes_out, char *sha256_hex,
                     char *err, size_t errlen);
void cdcd_ckpt_writer_abort(cdcd_ckpt_writer *w);

/* Reads and verifies a whole checkpoint. NULL with a message in err on any problem. */
cdcd_ckpt_reader *cdcd_ckpt_open(const char *path, char *err, size_t errlen);
/* Finds a section: 0 with data and bytes set (valid until close), or -1 when absent. */
int cdcd_ckpt_get(const cdcd_ckpt_reader *r, const char *name, const void **data, size_t *bytes);
/* Like cdcd_ckpt_get but the size must be exactly `bytes`; copies into dst. 0 or -1. */
int cdcd_ckpt_read_exact(const cdcd_ckpt_reader *r, const char *name, void *dst, size_t bytes);
void cdcd_ckpt_close(cdcd_ckpt_reader *r);

/* The DONE marker of a checkpoint: an empty file PATH.done, created durably (the file, then
 * its directory, as commit does) once every rank agreed the checkpoint was written. */
#define CDCD_CKPT_DONE_SUFFIX ".done"
int cdcd_ckpt_mark_done(const char *path);   /* 0, or -1 with errno */
int cdcd_ckpt_is_done(const char *path);     /* 1 when PATH.done exists */

/* SHA-256 of a buffer, as 64 hex digits plus NUL. */
void cdcd_sha256_hex(const void *buf, size_t len, char out[65]);

#endif

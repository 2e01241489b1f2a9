/* Token files (.tok): a tokenised corpus, one story after another, read by mmap.
 *
 * Layout (little-endian, every section 8-byte aligned):
 *   [0, 128)            header (cdcd_tokfile_header below)
 *   [ids_off, ...)      uint16 ids[n_tokens]          every story's tokens, back to back
 *   [offsets_off, ...)  uint64 offsets[n_stories + 1] story i = ids[offsets[i], offsets[i+1])
 *                                                      offsets[0] = 0, offsets[n] = n_tokens
 * Every story has at least one token (empty stories are skipped when writing). The header
 * records the vocabulary's checksum, size and special ids, so a batch iterator needs
 * nothing but the file, and a file made with another vocabulary is refused.
 *
 * Writing streams with bounded memory: ids go straight to a temporary file next to the
 * target, offsets to a second, unlinked temporary file that is appended to the first at
 * the end; then the header is written, the file fsynced and renamed over the target, and
 * the directory fsynced. A crash leaves either the old file or the new one, never a mix.
 *
 * Opening checks the header (magic, version, header checksum), the exact file size
 * (a truncated copy is refused), and that the offsets are increasing and end at n_tokens
 * (O(n_stories)); cdcd_tokfile_verify() also checks the data checksum and id range (O(n)). */
#ifndef CDCD_TOKFILE_H
#define CDCD_TOKFILE_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

#define CDCD_TOKFILE_MAGIC "CDCDTOK\0" /* 8 bytes */
#define CDCD_TOKFILE_VERSION 1
#define CDCD_TOKFILE_HEADER_BYTES 128
#define CDCD_TOKFILE_MAX_VOCAB 65536 /* ids are uint16 */

typedef struct {
    char magic[8];
    uint32_t version;
    uint32_t header_bytes;
    uint64_t vocab_checksum; /* cdcd_tok_checksum() of the vocabulary used */
    uint32_t vocab_size;
    int32_t pad_id, unk_id, cls_id, sep_id, mask_id;
    uint64_t n_stories;
    uint64_t n_tokens;
    uint64_t ids_off;        /* = CDCD_TOKFILE_HEADER_BYTES */
    uint64_t offsets_off;    /* ids_off + 2 * n_tokens rounded up to 8 */
    uint64_t file_bytes;     /* offsets_off + 8 * (n_stories + 1) */
    uint64_t data_checksum;  /* FNV-1a 64 of the id bytes, then of the offset bytes */
    uint8_t reserved[24];    /* zero */
    uint64_t header_checksum; /* FNV-1a 64 of the 120 bytes before it */
} cdcd_tokfile_header;

/* An open token file. The arrays point into the read-only mapping. */
typedef struct {
    cdcd_tokfile_header h;
    const uint16_t *ids;      /* n_tokens */
    const uint64_t *offsets;  /* n_stories + 1 */
    void *map;
    size_t map_bytes;
    char path[1024];
} cdcd_tokfile;

/* Opens and maps a token file. When tok is given, the file must have been made with the
 * same vocabulary (checksum and size). Returns NULL with a message in err. */
cdcd_tokfile *cdcd_tokfile_open(const char *path, const cdcd_tokenizer *tok, char *err,
                                size_t errlen);
void cdcd_tokfile_close(cdcd_tokfile *f);
/* Full check: data checksum and every id < vocab_size. 0, or -1 with a message. */
int cdcd_tokfile_verify(const cdcd_tokfile *f, char *err, size_t errlen);

static inline uint64_t cdcd_tokfile_story_len(const cdcd_tokfile *f, uint64_t i) {
    return f->offsets[i + 1] - f->offsets[i];
}
static inline const uint16_t *cdcd_tokfile_story(const cdcd_tokfile *f, uint64_t i) {
    return f->ids + f->offsets[i];
}

/* ------------------------------------------------------------------ writer */

typedef struct cdcd_tokfile_writer cdcd_tokfile_writer;

/* Starts writing path (through a temporary file in the same directory) for text encoded
 * with tok. NULL with a message in err. */
cdcd_tokfile_writer *cdcd_tokfile_writer_open(const char *path, const cdcd_tokenizer *tok,
                                              char *err, size_t errlen);
/* Appends ids to the current story (a story may arrive in pieces). 0, or -1 with a
 * message (an id out of range, a write error). */
int cdcd_tokfile_writer_append(cdcd_tokfile_writer *w, const int32_t *ids, size_t n);
/* Ends the current story. Returns 1 when a story was recorded, 0 when it had no tokens
 * (nothing recorded), -1 on error. */
int cdcd_tokfile_writer_end_story(cdcd_tokfile_writer *w);
uint64_t cdcd_tokfile_writer_stories(const cdcd_tokfile_writer *w);
uint64_t cdcd_tokfile_writer_tokens(const cdcd_tokfile_writer *w); /* incl. the open story */
/* Ends any open story, completes the file and renames it into place (fsync on the way).
 * Frees w whatever happens. 0, or -1 with a message (the target is then untouched). */
int cdcd_tokfile_writer_finish(cdcd_tokfile_writer *w, char *err, size_t errlen);
/* Drops everything written (the temporary file is removed) and frees w. */
void cdcd_tokfile_writer_abort(cdcd_tokfile_writer *w);
/* The message of the writer's last failure ("" if none). */
const char *cdcd_tokfile_writer_error(const cdcd_tokfile_writer *w);

#endif

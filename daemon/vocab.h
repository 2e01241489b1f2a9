/* The daemon's tokenizer: DATA_DIR/vocab.txt, loaded at start and again on SIGHUP while
 * it is missing. Sampling jobs and periodic stories read it from any thread; once loaded
 * it stays until the daemon exits (published with release order, read with acquire). */
#ifndef CDCDD_VOCAB_H
#define CDCDD_VOCAB_H

struct cdcd_tokenizer;
typedef struct cdcdd_vocab cdcdd_vocab;

/* data_dir is copied. NULL when out of memory. */
cdcdd_vocab *cdcdd_vocab_new(const char *data_dir);
void cdcdd_vocab_free(cdcdd_vocab *v);
/* Loop thread: loads the file unless it is loaded; logs the outcome. */
void cdcdd_vocab_load(cdcdd_vocab *v);
/* Any thread: the tokenizer, or NULL with *why (may be NULL) saying why. */
const struct cdcd_tokenizer *cdcdd_vocab_get(cdcdd_vocab *v, const char **why);

#endif

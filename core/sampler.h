/* The CDCD sampler: Euler (or Heun) ODE integration with score interpolation, timesteps
 * spaced uniformly in warped time, prompts/infilling through the conditioning channels,
 * classifier-free guidance and self-conditioning. Runs on the caller's thread (which must
 * be the only BLAS caller for the model it uses). */
#ifndef CDCD_SAMPLER_H
#define CDCD_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct cdcd_model;
struct cdcd_schedule;
struct cdcd_tokenizer;
struct cdcd_vocab_map;

#define CDCD_SAMPLE_DEFAULT_STEPS 200
/* x-hat-0 softmax temperature: 0.9 won the sampling sweep on the default 60-minute tiny run
 * (docs/quality.md: word figures up, token entropy still above 4.8 nats); the paper uses 0.9 too */
#define CDCD_SAMPLE_DEFAULT_SCORE_TEMP 0.9f
#define CDCD_SAMPLE_DEFAULT_N 4

typedef struct {
    int n;              /* stories per call */
    int steps;          /* ODE steps (>= 1) */
    int length;         /* sequence length L, <= the model's max_seq_len; 0 = model max */
    uint64_t seed;
    float temperature;  /* final-token sampling temperature; 0 = argmax */
    float guidance;     /* classifier-free guidance scale gamma; 1 = plain conditional */
    float score_temp;   /* scales the logits used for x-hat-0; 1 = as trained */
    int heun;           /* 1 = Heun's second-order method */
    int self_cond;      /* 1 = use self-conditioning (the model must be trained with it),
                           0 = not, -1 = when the model has it (the default) */
    float clamp_below;  /* "clamping trick" (Diffusion-LM): at steps with sigma below this,
                           x-hat-0 is snapped to the embedding of the argmax token; 0 = off */
    float churn;        /* stochastic sampling (Karras et al. 2022, "churn"): before each step but
                           the last, noise is added to raise sigma from t to t * (1 + churn) and
                           the step starts there; 0 = the deterministic ODE (the default) */
    const char *prompt; /* prefix text, or NULL/"" */
    const char *infill; /* text with [MASK] tokens to fill, or NULL */
    int preview_every;  /* decode the argmax text every K steps for progress (0 = never) */
    /* The model's vocabulary map (checkpoint or trainer), or NULL when the model's ids are
     * the tokenizer's. Prompts are mapped in; results come back as tokenizer ids. */
    const struct cdcd_vocab_map *vmap;
} cdcd_sample_params;

void cdcd_sample_params_default(cdcd_sample_params *p);

typedef struct {
    int n, T;
    int32_t *ids;  /* (n, T): [CLS] story [SEP] [PAD]... */
    char **texts;  /* n decoded stories, cut at the first [SEP] */
} cdcd_sample_result;

/* Progress after each step; preview is the argmax text of story 0 or NULL. Return non-zero
 * to cancel the run. */
typedef int (*cdcd_sample_progress_fn)(void *ctx, int step, int n_steps, double t,
                                       double mean_entropy, const char *preview);

/* Returns 0, or -1 with a message in err (bad arguments are reported, never crash). */
int cdcd_sample(struct cdcd_model *model, const struct cdcd_schedule *sched,
                const struct cdcd_tokenizer *tok, const cdcd_sample_params *params,
                cdcd_sample_progress_fn progress, void *progress_ctx, cdcd_sample_result *out,
                char *err, size_t errlen);
void cdcd_sample_result_free(cdcd_sample_result *r);

#endif

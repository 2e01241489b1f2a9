/* Run config: defaults, overrides, validation errors naming the field, path confinement,
 * memory limit, and a JSON round trip. */
#include <stdio.h>
#include <sys/stat.h>

#include "runconfig.h"
#include "test.h"

static char data_dir[4200];

static void setup(void) {
    snprintf(data_dir, sizeof data_dir, "%s/data", test_tmpdir());
    mkdir(data_dir, 0755);
    char p[4400];
    snprintf(p, sizeof p, "%s/train.tok", data_dir);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/valid.tok", data_dir);
    f = fopen(p, "w");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/other.tok", data_dir);
    f = fopen(p, "w");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/vocab.txt", data_dir);
    f = fopen(p, "w");
    if (f) fclose(f);
}

static cdcd_run_config *parse(const char *json, int confine, uint64_t max_mem, cdcd_config_error *err) {
    cdcd_config_env env = {.data_dir = data_dir, .confine_to_data_dir = confine, .max_memory_bytes = max_mem};
    return cdcd_run_config_parse(json, strlen(json), &env, err);
}

static void expect_error(const char *json, const char *field, int confine) {
    cdcd_config_error err;
    cdcd_run_config *c = parse(json, confine, 0, &err);
    EXPECTF(c == NULL, "accepted: %s", json);
    if (c) {
        cdcd_run_config_free(c);
        return;
    }
    EXPECTF(strcmp(err.field, field) == 0, "%s: field '%s' (%s), expected '%s'", json, err.field, err.message, field);
    EXPECTF(err.message[0] != 0, "%s: empty message", json);
}

TEST(test_runconfig_tiny_defaults) {
    cdcd_config_error err;
    cdcd_run_config *c = parse("{\"preset\":\"tiny\"}", 1, 0, &err);
    ASSERT(c != NULL);
    EXPECT(c->model.d_model == 256 && c->model.n_layers == 4 && c->model.d_emb == 16);
    EXPECT(c->model.cond_channels == 1);
    EXPECT(c->cond.p_cond > 0); /* prompting works out of the box */
    EXPECT(c->data.seq_len == 128 && c->train.batch_size == 32);
    EXPECT(strstr(c->data.train, "train.tok") != NULL);
    EXPECT(c->schedule.tmax > c->schedule.tmin);
    /* the quality levers that won (docs/quality.md) are on; the others are opt-in */
    EXPECT(c->data.vocab == CDCD_VOCAB_CORPUS && c->model.output_prior == 0 && c->model.self_cond == 1);
    EXPECT(c->cond.p_self_cond == 0.5f && c->optim.ema == 0.0f);
    EXPECT(c->train.minutes == 60.0f); /* tiny is the one-hour recipe */
    EXPECT(c->train.sample_every == 500 && c->train.sample_n == 4 && c->train.sample_steps == 100);
    /* one process, and for a distributed run: no relaunch, a minute of silence is a hang */
    EXPECT(c->distributed.ranks == 1 && c->distributed.hostfile[0] == 0);
    EXPECT(c->distributed.max_restarts == 0 && c->distributed.hang_min_s == CDCD_RUN_HANG_MIN_S_DEFAULT);
    EXPECT(CDCD_RUN_HANG_MIN_S_DEFAULT == 60);
    cdcd_run_config_free(c);
    /* the embedding head takes no output prior unless asked (and then it is an error) */
    c = parse("{\"model\":{\"head\":\"embedding\"}}", 1, 0, &err);
    ASSERT(c != NULL);
    EXPECT(c->model.output_prior == 0);
    cdcd_run_config_free(c);
    c = parse("{}", 1, 0, &err); /* preset defaults to tiny */
    ASSERT(c != NULL);
    EXPECT(c->model.d_model == 256 && c->train.minutes == 60.0f);
    cdcd_run_config_free(c);
    /* the one-hour budget is tiny's: it can be removed, and other presets have none */
    c = parse("{\"preset\":\"tiny\",\"train\":{\"minutes\":0}}", 1, 0, &err);
    ASSERT(c != NULL);
    EXPECT(c->train.minutes == 0.0f);
    cdcd_run_config_free(c);
    c = parse("{\"preset\":\"small\"}", 1, 0, &err);
    ASSERT(c != NULL);
    EXPECT(c->train.minutes == 0.0f);
    cdcd_run_config_free(c);
}

TEST(test_runconfig_overrides) {
    cdcd_config_error err;
    cdcd_run_config *c = parse("{\"preset\":\"small\",\"seed\":7,\"model\":{\"n_layers\":2,\"head\":\"embedding\"},"
                               "\"data\":{\"train\":\"other.tok\",\"seq_len\":64},\"train\":{\"batch_size\":4,"
                               "\"max_steps\":10,\"threads\":1,\"checkpoint_every\":5},\"cond\":{\"p_cond\":0}}",
                               1, 0, &err);

    if (!c) {
        EXPECTF(0, "%s: %s", err.field, err.message);
        return;
    }
    EXPECT(c->model.d_model == 512 && c->model.n_layers == 2 && c->model.head == CDCD_HEAD_EMBEDDING);
    EXPECT(c->seed == 7 && c->data.seq_len == 64 && c->train.batch_size == 4 && c->train.max_steps == 10);
    EXPECT(strstr(c->data.train, "other.tok") != NULL);
    EXPECT(c->cond.p_cond == 0.0f);
    cdcd_run_config_free(c);
}

TEST(test_runconfig_errors_name_the_field) {
    expect_error("{\"bogus\":1}", "bogus", 1);
    expect_error("{\"train\":{\"batchsize\":4}}", "train.batchsize", 1);
    expect_error("{\"train\":{\"batch_size\":\"4\"}}", "train.batch_size", 1);
    expect_error("{\"train\":{\"batch_size\":0}}", "train.batch_size", 1);
    expect_error("{\"train\":{\"batch_size\":2.5}}", "train.batch_size", 1);
    expect_error("{\"train\":{\"max_steps\":1e300}}", "train.max_steps", 1);
    expect_error("{\"optim\":{\"lr\":-1}}", "optim.lr", 1);
    expect_error("{\"preset\":\"huge\"}", "preset", 1);
    expect_error("{\"model\":{\"n_heads\":3}}", "model.n_heads", 1);
    expect_error("{\"data\":{\"seq_len\":4096}}", "data.seq_len", 1);
    expect_error("{\"schedule\":{\"tmin\":5,\"tmax\":2}}", "schedule.tmax", 1);
    expect_error("{\"model\":{\"cond_channels\":false}}", "cond.p_cond", 1);
    expect_error("{\"model\":{\"self_cond\":false},\"cond\":{\"p_self_cond\":0.5}}", "cond.p_self_cond", 1);
    expect_error("{\"model\":{\"head\":\"embedding\",\"output_prior\":true}}", "model.output_prior", 1);
    expect_error("{\"model\":{\"head\":\"softmax\"}}", "model.head", 1);
    expect_error("{\"train\":[]}", "train", 1);
    expect_error("{\"distributed\":{\"ranks\":0}}", "distributed.ranks", 1);
    expect_error("{\"distributed\":{\"max_restarts\":-1}}", "distributed.max_restarts", 1);
    expect_error("{\"distributed\":{\"max_restarts\":101}}", "distributed.max_restarts", 1);
    expect_error("{\"distributed\":{\"hang_min_s\":0}}", "distributed.hang_min_s", 1);
    expect_error("[1,2]", "", 1);
    expect_error("{\"train\":", "", 1);
}

TEST(test_runconfig_paths_confined) {
    expect_error("{\"data\":{\"train\":\"/etc/passwd\"}}", "data.train", 1);
    expect_error("{\"data\":{\"train\":\"../secret.tok\"}}", "data.train", 1);
    expect_error("{\"data\":{\"valid\":\"a/../../x.tok\"}}", "data.valid", 1);
    expect_error("{\"data\":{\"train\":\"missing.tok\"}}", "data.train", 1);
    expect_error("{\"data\":{\"vocab_file\":\"/etc/passwd\"}}", "data.vocab_file", 1);
    expect_error("{\"data\":{\"vocab_file\":\"../vocab.txt\"}}", "data.vocab_file", 1);
    expect_error("{\"data\":{\"vocab_file\":\"missing.txt\"}}", "data.vocab_file", 1);
    /* The CLI (not confined) may use absolute paths. */
    char json[9000];
    snprintf(json, sizeof json, "{\"data\":{\"train\":\"%s/train.tok\"}}", data_dir);
    cdcd_config_error err;
    cdcd_run_config *c = parse(json, 0, 0, &err);
    EXPECTF(c != NULL, "%s", err.message);
    cdcd_run_config_free(c);
}

TEST(test_runconfig_memory_limit) {
    cdcd_config_error err;
    cdcd_run_config *c = parse("{\"preset\":\"base\",\"train\":{\"batch_size\":512}}", 1, 1ull << 30, &err);
    EXPECT(c == NULL);
    EXPECTF(strstr(err.message, "MiB") != NULL, "%s", err.message);
    c = parse("{\"preset\":\"tiny\",\"train\":{\"batch_size\":4}}", 1, 8ull << 30, &err);
    EXPECTF(c != NULL, "%s", err.message);
    if (c) EXPECT(cdcd_run_config_memory_estimate(c) > 10u * 1000 * 1000);
    cdcd_run_config_free(c);
}

TEST(test_runconfig_json_round_trip) {
    cdcd_config_error err;
    cdcd_run_config *a = parse("{\"preset\":\"tiny\",\"optim\":{\"lr\":0.0003,\"decay\":\"exp\"},\"schedule\":{\"kind\":\"pwl\"}}", 1, 0, &err);
    ASSERT(a != NULL);
    char *json = cdcd_run_config_to_json(a);
    ASSERT(json != NULL);
    cdcd_config_env env = {.data_dir = NULL, .confine_to_data_dir = 0, .skip_file_checks = 1};
    cdcd_run_config *b = cdcd_run_config_parse(json, strlen(json), &env, &err);
    EXPECTF(b != NULL, "%s: %s in %s", err.field, err.message, json);
    if (b) {
        EXPECT(memcmp(&a->model, &b->model, sizeof a->model) == 0);
        EXPECT(memcmp(&a->optim, &b->optim, sizeof a->optim) == 0);
        EXPECT(memcmp(&a->schedule, &b->schedule, sizeof a->schedule) == 0);
        EXPECT(memcmp(&a->cond, &b->cond, sizeof a->cond) == 0);
        EXPECT_STREQ(a->data.train, b->data.train);
    }
    /* data.vocab_file at its default is left out of the JSON (builds that predate the key
     * read it); set, it resolves in the data directory and round trips. */
    EXPECTF(strstr(json, "vocab_file") == NULL, "%s", json);
    free(json);
    cdcd_run_config_free(a);
    cdcd_run_config_free(b);
    a = parse("{\"data\":{\"vocab_file\":\"vocab.txt\"}}", 1, 0, &err);
    ASSERT(a != NULL);
    char want[4400];
    snprintf(want, sizeof want, "%s/vocab.txt", data_dir);
    EXPECT_STREQ(a->data.vocab_file, want);
    json = cdcd_run_config_to_json(a);
    b = json ? cdcd_run_config_parse(json, strlen(json), &env, &err) : NULL;
    EXPECT(b != NULL && strcmp(b->data.vocab_file, want) == 0);
    free(json);
    cdcd_run_config_free(a);
    cdcd_run_config_free(b);
}

int main(void) {
    setup();
    RUN(test_runconfig_tiny_defaults);
    RUN(test_runconfig_overrides);
    RUN(test_runconfig_errors_name_the_field);
    RUN(test_runconfig_paths_confined);
    RUN(test_runconfig_memory_limit);
    RUN(test_runconfig_json_round_trip);
    return test_summary();
}

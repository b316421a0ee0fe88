/*
 * Tests for the answer side of src/model/: canned responses of each format decoded into a
 * struct model_turn — text, thoughts, signatures, calls (made-up ids, arguments that are not
 * JSON or not an object), finish reasons, usage (cut to its bounds) — and the answers that are
 * errors (Gemini's blocked prompt, no candidates, no choices), the upstream's words on them
 * (wire->why) and the redaction of the key from upstream text.
 */
#include "model_test.h"

#include "suites.h"

/* Decodes resp (a template) as spec's format with id_base; the turn must be cleared. */
static int
decode(const char *spec, const char *resp, size_t id_base, struct model_turn *t, struct err **errp)
{
    struct model_ref m;
    json_t *r = jl(resp);
    int rc;

    ASSERT_NO_ERR(model_parse(spec, &m, errp), errp);
    memset(t, 0, sizeof(*t));
    rc = model__wire(m.format)->decode(&m, r, id_base, t, errp);
    json_decref(r);
    return rc;
}

static const char gemini_resp[] =
    "{'candidates':[{'content':{'role':'model','parts':["
    "   {'text':'Plan: ','thought':true},{'text':'look','thought':true},"
    "   {'text':'I will '},{'text':'list.'},"
    "   {'functionCall':{'name':'bash','args':{'command':'ls'}},'thoughtSignature':'SIG1'},"
    "   {'functionCall':{'name':'file_system','id':'fc-9'},'thoughtSignature':'SIG2'},"
    "   {'executableCode':{'code':'1'}}]},"
    "  'finishReason':'STOP','index':0}],"
    " 'usageMetadata':{'promptTokenCount':100,'candidatesTokenCount':20,"
    "   'thoughtsTokenCount':30,'cachedContentTokenCount':60,'totalTokenCount':150},"
    " 'modelVersion':'gemini-2.5-pro'}";

static void
test_gemini_decode(void **state)
{
    struct model_turn t;
    struct err *e = NULL;
    (void)state;

    ASSERT_NO_ERR(decode("gemini-2.5-pro", gemini_resp, 2, &t, &e), &e);
    assert_string_equal(t.text, "I will list.");
    assert_string_equal(t.thought, "Plan: look");
    assert_string_equal(t.thought_signature, "SIG1");
    assert_int_equal(t.ncalls, 2);
    /* No id from Gemini: made up, after the two calls already in the conversation. */
    assert_string_equal(t.calls[0].id, "call_3");
    assert_string_equal(t.calls[0].name, "bash");
    ASSERT_JSON_EQ(t.calls[0].args, "{'command':'ls'}");
    assert_string_equal(t.calls[0].args_text, "{\"command\":\"ls\"}");
    assert_null(t.calls[0].args_error);
    assert_string_equal(t.calls[1].id, "fc-9");
    ASSERT_JSON_EQ(t.calls[1].args, "{}");
    assert_int_equal(t.finish, MODEL_FINISH_TOOLS);
    assert_string_equal(t.finish_reason, "STOP");
    assert_int_equal(t.usage.input, 100);
    assert_int_equal(t.usage.output, 20);
    assert_int_equal(t.usage.thought, 30);
    assert_int_equal(t.usage.cached, 60);
    assert_int_equal(t.usage.total, 150);
    /* The content object is kept verbatim: signatures and the unknown part survive. */
    ASSERT_JSON_EQ(t.message, "{'role':'assistant','text':'I will list.','thought':'Plan: look',"
                              " 'calls':[{'id':'call_3','name':'bash','args':{'command':'ls'}},"
                              "          {'id':'fc-9','name':'file_system','args':{}}],"
                              " 'native':{'format':'gemini','message':{'role':'model','parts':["
                              "   {'text':'Plan: ','thought':true},{'text':'look','thought':true},"
                              "   {'text':'I will '},{'text':'list.'},"
                              "   {'functionCall':{'name':'bash','args':{'command':'ls'}},"
                              "    'thoughtSignature':'SIG1'},"
                              "   {'functionCall':{'name':'file_system','id':'fc-9'},"
                              "    'thoughtSignature':'SIG2'},"
                              "   {'executableCode':{'code':'1'}}]}}}");
    model_turn_clear(&t);
    assert_null(t.message);
}

/*
 * An answer in very many small parts (an upstream may send one word a part) is put together
 * in order, thoughts apart from text, each part appended in constant time: appending by
 * copying the whole so far made 6 MB of parts take over a minute.
 */
static void
test_many_parts(void **state)
{
    enum {
        N = 200000
    };
    json_t *parts = json_array(), *r;
    struct model_ref m;
    struct model_turn t;
    struct err *e = NULL;
    (void)state;

    for (int i = 0; i < N; i++)
        json_array_append_new(parts, i % 2 == 0
                                         ? json_pack("{s:s}", "text", "ab")
                                         : json_pack("{s:s, s:b}", "text", "c", "thought", 1));
    r = json_pack("{s:[{s:{s:s, s:o}, s:s}]}", "candidates", "content", "role", "model", "parts",
                  parts, "finishReason", "STOP");
    ASSERT_NO_ERR(model_parse("gemini-2.5-pro", &m, &e), &e);
    memset(&t, 0, sizeof(t));
    ASSERT_NO_ERR(model__wire(m.format)->decode(&m, r, 0, &t, &e), &e);
    assert_int_equal(strlen(t.text), N);
    assert_int_equal(t.text_len, N);
    assert_int_equal(strlen(t.thought), N / 2);
    assert_int_equal(strncmp(t.text, "ababab", 6), 0);
    assert_int_equal(strcmp(t.text + N - 2, "ab"), 0);
    assert_int_equal(strspn(t.thought, "c"), N / 2);
    model_turn_clear(&t);
    json_decref(r);
}

/*
 * Arguments of a call that hold more values than any answer needs are refused unparsed, with
 * the reason for the model: parsing them would take many times their bytes in memory.
 */
static void
test_too_many_values(void **state)
{
    struct buf b;
    struct model_turn t;
    struct err *e = NULL;
    char *args;
    json_t *r;
    struct model_ref m;
    (void)state;

    buf_init(&b, 8u << 20);
    buf_append(&b, "{\"k\":[", 6, NULL);
    for (unsigned i = 0; i <= UTIL_JSON_VALUES_MAX; i++)
        buf_append(&b, "{},", 3, NULL);
    buf_append(&b, "{}]}", 4, NULL);
    args = buf_steal(&b, NULL);
    r = json_pack("{s:[{s:{s:[{s:{s:s, s:s, s:s}}]}, s:s}]}", "choices", "message", "tool_calls",
                  "function", "name", "bash", "arguments", args, "type", "function",
                  "finish_reason", "tool_calls");
    ASSERT_NO_ERR(model_parse("openai:gpt-4o", &m, &e), &e);
    memset(&t, 0, sizeof(t));
    ASSERT_NO_ERR(model__wire(m.format)->decode(&m, r, 0, &t, &e), &e);
    assert_int_equal(t.ncalls, 1);
    assert_null(t.calls[0].args);
    assert_non_null(t.calls[0].args_error);
    assert_non_null(strstr(t.calls[0].args_error, "more than 262144 JSON values"));
    assert_null(model__load_capped(args, strlen(args), NULL));
    model_turn_clear(&t);
    json_decref(r);
    free(args);
}

static void
test_gemini_finish_and_errors(void **state)
{
    static const struct {
        const char *resp;
        int finish; /* -1: an error */
        int code;
        const char *why;
    } cases[] = {
        { "{'candidates':[{'content':{'parts':[{'text':'x'}]},'finishReason':'MAX_TOKENS'}]}",
          MODEL_FINISH_LENGTH, 0, NULL },
        { "{'candidates':[{'finishReason':'SAFETY'}]}", MODEL_FINISH_OTHER, 0, NULL },
        /* A tool call Gemini could not read, or of a tool it was not offered: no answer. */
        { "{'candidates':[{'finishReason':'MALFORMED_FUNCTION_CALL'}]}", MODEL_FINISH_MALFORMED, 0,
          NULL },
        { "{'candidates':[{'content':{'parts':[{'text':'x'}]},"
          "'finishReason':'UNEXPECTED_TOOL_CALL'}]}",
          MODEL_FINISH_MALFORMED, 0, NULL },
        { "{'candidates':[{'content':{'parts':[{'text':'x'}]}}]}", MODEL_FINISH_STOP, 0, NULL },
        { "{'promptFeedback':{'blockReason':'PROHIBITED_CONTENT'}}", -1, ERR_INVALID,
          "the prompt was blocked" },
        { "{'candidates':[],'promptFeedback':{'blockReason':'SAFETY',"
          "'blockReasonMessage':'no'}}",
          -1, ERR_INVALID, "the prompt was blocked" },
        { "{'usageMetadata':{}}", -1, ERR_UPSTREAM, "no candidates" },
        { "[1]", -1, ERR_UPSTREAM, "not a JSON object" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_turn t;
        struct err *e = NULL;
        int rc = decode("gemini-x", cases[i].resp, 0, &t, &e);
        if (cases[i].finish < 0) {
            assert_int_equal(rc, -1);
            ASSERT_ERR_CONTAINS(&e, cases[i].code, cases[i].why);
        } else {
            ASSERT_NO_ERR(rc, &e);
            assert_int_equal(t.finish, cases[i].finish);
            assert_non_null(t.message);
        }
        model_turn_clear(&t);
    }
}

static const char openai_resp[] =
    "{'id':'chatcmpl-1','object':'chat.completion','choices':[{'index':0,"
    "  'message':{'role':'assistant','content':null,'reasoning_content':'Think.',"
    "   'tool_calls':["
    "    {'id':'call_abc','type':'function','function':{'name':'bash',"
    "      'arguments':'{`command`: `ls -l`}'}},"
    "    {'type':'function','function':{'name':'bash','arguments':'{`command`: '}},"
    "    {'type':'function','function':{'name':'bash','arguments':'[1,2]'}},"
    "    {'type':'function','function':{'name':'bash','arguments':{'command':'pwd'}}},"
    "    {'type':'function','function':{'name':'noargs','arguments':''}}]},"
    "  'finish_reason':'tool_calls'}],"
    " 'usage':{'prompt_tokens':50,'completion_tokens':40,'total_tokens':90,"
    "   'prompt_tokens_details':{'cached_tokens':10},"
    "   'completion_tokens_details':{'reasoning_tokens':15}}}";

static void
test_openai_decode(void **state)
{
    struct model_turn t;
    struct err *e = NULL;
    (void)state;

    ASSERT_NO_ERR(decode("openai:x", openai_resp, 0, &t, &e), &e);
    assert_null(t.text);
    assert_string_equal(t.thought, "Think.");
    assert_int_equal(t.ncalls, 5);
    assert_string_equal(t.calls[0].id, "call_abc");
    ASSERT_JSON_EQ(t.calls[0].args, "{'command':'ls -l'}");
    assert_string_equal(t.calls[0].args_text, "{\"command\": \"ls -l\"}");
    /* Missing ids are made up from the position in the conversation. */
    assert_string_equal(t.calls[1].id, "call_2");
    assert_null(t.calls[1].args);
    assert_string_equal(t.calls[1].args_text, "{\"command\": ");
    assert_non_null(t.calls[1].args_error);
    assert_non_null(strstr(t.calls[1].args_error, "not valid JSON"));
    assert_null(t.calls[2].args);
    assert_string_equal(t.calls[2].args_error, "the arguments are a JSON array, not an object");
    /* An object instead of a string (some local servers). */
    ASSERT_JSON_EQ(t.calls[3].args, "{'command':'pwd'}");
    ASSERT_JSON_EQ(t.calls[4].args, "{}");
    assert_int_equal(t.finish, MODEL_FINISH_TOOLS);
    assert_int_equal(t.usage.input, 50);
    assert_int_equal(t.usage.output, 25);
    assert_int_equal(t.usage.thought, 15);
    assert_int_equal(t.usage.cached, 10);
    assert_int_equal(t.usage.total, 90);
    /* The neutral call keeps what the loop needs to tell the model about the bad call. */
    {
        json_t *c = json_array_get(json_object_get(t.message, "calls"), 1);
        assert_string_equal(json_string_value(json_object_get(c, "id")), "call_2");
        assert_string_equal(json_string_value(json_object_get(c, "args_text")), "{\"command\": ");
        assert_string_equal(json_string_value(json_object_get(c, "args_error")),
                            t.calls[1].args_error);
        assert_null(json_object_get(c, "args"));
    }
    model_turn_clear(&t);
}

static void
test_openai_tolerance(void **state)
{
    static const struct {
        const char *resp;
        const char *text;
        int finish; /* -1: an error */
        const char *why;
    } cases[] = {
        /* No usage, content as parts, reasoning under Ollama's name. */
        { "{'choices':[{'message':{'content':[{'type':'text','text':'a'},{'text':'b'}]},"
          "'finish_reason':'stop'}]}",
          "ab", MODEL_FINISH_STOP, NULL },
        { "{'choices':[{'message':{'role':'assistant','content':'cut'},"
          "'finish_reason':'length'}]}",
          "cut", MODEL_FINISH_LENGTH, NULL },
        { "{'choices':[{'message':{'content':'x'},'finish_reason':'content_filter'}]}", "x",
          MODEL_FINISH_OTHER, NULL },
        /* llama-server may say stop with tool calls. */
        { "{'choices':[{'message':{'tool_calls':[{'function':{'name':'a','arguments':'{}'}}]},"
          "'finish_reason':'stop'}]}",
          NULL, MODEL_FINISH_TOOLS, NULL },
        /* Tool calls announced and none sent: the server could not read the model's call. */
        { "{'choices':[{'message':{'content':'x'},'finish_reason':'tool_calls'}]}", "x",
          MODEL_FINISH_MALFORMED, NULL },
        { "{'choices':[{'message':{'role':'assistant'},'finish_reason':'function_call'}]}", NULL,
          MODEL_FINISH_MALFORMED, NULL },
        { "{'choices':[]}", NULL, -1, "no choices[0].message" },
        { "{'error':{'message':'model not loaded'}}", NULL, -1, "no choices[0].message" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_turn t;
        struct err *e = NULL;
        int rc = decode("openai:x", cases[i].resp, 0, &t, &e);
        if (cases[i].finish < 0) {
            assert_int_equal(rc, -1);
            ASSERT_ERR_CONTAINS(&e, ERR_UPSTREAM, cases[i].why);
            model_turn_clear(&t);
            continue;
        }
        ASSERT_NO_ERR(rc, &e);
        if (cases[i].text != NULL)
            assert_string_equal(t.text, cases[i].text);
        else
            assert_null(t.text);
        assert_int_equal(t.finish, cases[i].finish);
        assert_int_equal(t.usage.total, 0);
        model_turn_clear(&t);
    }
    {
        struct model_turn t;
        struct err *e = NULL;
        ASSERT_NO_ERR(decode("openai:x",
                             "{'choices':[{'message':{'content':'x','reasoning':'r'}}]}", 0, &t,
                             &e),
                      &e);
        assert_string_equal(t.thought, "r");
        model_turn_clear(&t);
    }
}

static const char anthropic_resp[] =
    "{'id':'msg_1','type':'message','role':'assistant','model':'claude-x',"
    " 'content':["
    "  {'type':'thinking','thinking':'Let me see.','signature':'SIGA'},"
    "  {'type':'redacted_thinking','data':'xyz'},"
    "  {'type':'text','text':'Listing.'},"
    "  {'type':'tool_use','id':'toolu_01','name':'bash','input':{'command':'ls'}},"
    "  {'type':'tool_use','id':'toolu_02','name':'bash','input':'oops'}],"
    " 'stop_reason':'tool_use','stop_sequence':null,"
    " 'usage':{'input_tokens':10,'output_tokens':30,'cache_read_input_tokens':200,"
    "   'cache_creation_input_tokens':5}}";

static void
test_anthropic_decode(void **state)
{
    struct model_turn t;
    struct err *e = NULL;
    (void)state;

    ASSERT_NO_ERR(decode("anthropic:claude-x", anthropic_resp, 0, &t, &e), &e);
    assert_string_equal(t.text, "Listing.");
    assert_string_equal(t.thought, "Let me see.");
    assert_string_equal(t.thought_signature, "SIGA");
    assert_int_equal(t.ncalls, 2);
    assert_string_equal(t.calls[0].id, "toolu_01");
    ASSERT_JSON_EQ(t.calls[0].args, "{'command':'ls'}");
    assert_null(t.calls[1].args);
    assert_string_equal(t.calls[1].args_error, "the arguments are a JSON string, not an object");
    assert_int_equal(t.finish, MODEL_FINISH_TOOLS);
    assert_string_equal(t.finish_reason, "tool_use");
    /* Input counts cache reads and creations. */
    assert_int_equal(t.usage.input, 215);
    assert_int_equal(t.usage.cached, 200);
    assert_int_equal(t.usage.output, 30);
    assert_int_equal(t.usage.thought, 0);
    assert_int_equal(t.usage.total, 245);
    ASSERT_JSON_EQ(json_object_get(t.message, "native"),
                   "{'format':'anthropic','message':{'role':'assistant','content':["
                   "  {'type':'thinking','thinking':'Let me see.','signature':'SIGA'},"
                   "  {'type':'redacted_thinking','data':'xyz'},"
                   "  {'type':'text','text':'Listing.'},"
                   "  {'type':'tool_use','id':'toolu_01','name':'bash','input':{'command':'ls'}},"
                   "  {'type':'tool_use','id':'toolu_02','name':'bash','input':'oops'}]}}");
    model_turn_clear(&t);
}

static void
test_anthropic_finish_and_errors(void **state)
{
    static const struct {
        const char *resp;
        int finish; /* -1: an error */
        const char *why;
    } cases[] = {
        { "{'content':[{'type':'text','text':'x'}],'stop_reason':'end_turn'}", MODEL_FINISH_STOP,
          NULL },
        { "{'content':[],'stop_reason':'max_tokens'}", MODEL_FINISH_LENGTH, NULL },
        { "{'content':[],'stop_reason':'refusal'}", MODEL_FINISH_OTHER, NULL },
        { "{'content':[],'stop_reason':'pause_turn'}", MODEL_FINISH_OTHER, NULL },
        { "{'content':[{'type':'text','text':'x'}],'stop_reason':'model_context_window_exceeded'}",
          MODEL_FINISH_LENGTH, NULL },
        { "{'content':[{'type':'text','text':'x'}],'stop_reason':'tool_use'}",
          MODEL_FINISH_MALFORMED, NULL },
        { "{'type':'error','error':{'type':'overloaded_error','message':'Overloaded'}}", -1,
          "no content" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_turn t;
        struct err *e = NULL;
        int rc = decode("anthropic:x", cases[i].resp, 0, &t, &e);
        if (cases[i].finish < 0) {
            assert_int_equal(rc, -1);
            ASSERT_ERR_CONTAINS(&e, ERR_UPSTREAM, cases[i].why);
        } else {
            ASSERT_NO_ERR(rc, &e);
            assert_int_equal(t.finish, cases[i].finish);
        }
        model_turn_clear(&t);
    }
}

/* Token counts an upstream reports are cut to [0, MODEL_TOKENS_MAX], and sums of them too:
 * INT64_MAX must not overflow (undefined; the UBSan build aborts), a negative count must not
 * lower a run's totals below what was spent, a huge real must not become 0. */
static void
test_usage_bounds(void **state)
{
#define I64MAX "9223372036854775807"
#define M      MODEL_TOKENS_MAX
    static const struct {
        const char *spec, *resp;
        struct model_usage want;
    } cases[] = {
        { "gemini-x",
          "{'candidates':[{'finishReason':'STOP'}],'usageMetadata':{"
          "'promptTokenCount':" I64MAX ",'toolUsePromptTokenCount':1,"
          "'candidatesTokenCount':" I64MAX ",'thoughtsTokenCount':" I64MAX ","
          "'cachedContentTokenCount':" I64MAX "}}",
          { .input = M, .output = M, .thought = M, .cached = M, .total = M } },
        { "gemini-x",
          "{'candidates':[{'finishReason':'STOP'}],'usageMetadata':{"
          "'promptTokenCount':-1000000000,'candidatesTokenCount':-5,'totalTokenCount':-7}}",
          { 0 } },
        { "gemini-x",
          "{'candidates':[{'finishReason':'STOP'}],'usageMetadata':{"
          "'promptTokenCount':1e30,'candidatesTokenCount':2.5,'cachedContentTokenCount':9}}",
          { .input = M, .output = 2, .cached = 9, .total = M } },
        { "openai:x",
          "{'choices':[{'message':{'content':'x'}}],'usage':{'prompt_tokens':" I64MAX ","
          "'completion_tokens':" I64MAX ",'completion_tokens_details':{'reasoning_tokens':5}}}",
          { .input = M, .output = M - 5, .thought = 5, .total = M } },
        { "openai:x",
          "{'choices':[{'message':{'content':'x'}}],'usage':{'prompt_tokens':-1000000000,"
          "'completion_tokens':10,'completion_tokens_details':{'reasoning_tokens':-20},"
          "'prompt_tokens_details':{'cached_tokens':-3},'total_tokens':-1}}",
          { .output = 10, .total = 10 } },
        { "openai:x",
          "{'choices':[{'message':{'content':'x'}}],'usage':{'prompt_tokens':4,"
          "'completion_tokens':1,'prompt_tokens_details':{'cached_tokens':60}}}",
          { .input = 4, .output = 1, .cached = 4, .total = 5 } },
        { "anthropic:x",
          "{'content':[],'usage':{'input_tokens':" I64MAX ",'cache_read_input_tokens':" I64MAX
          ",'cache_creation_input_tokens':" I64MAX ",'output_tokens':" I64MAX "}}",
          { .input = M, .output = M, .cached = M, .total = M } },
        { "anthropic:x",
          "{'content':[],'usage':{'input_tokens':-1000000000,'output_tokens':-1,"
          "'cache_read_input_tokens':5}}",
          { .input = 5, .cached = 5, .total = 5 } },
    };
#undef M
#undef I64MAX
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_turn t;
        struct err *e = NULL;
        ASSERT_NO_ERR(decode(cases[i].spec, cases[i].resp, 0, &t, &e), &e);
        assert_int_equal(t.usage.input, cases[i].want.input);
        assert_int_equal(t.usage.output, cases[i].want.output);
        assert_int_equal(t.usage.thought, cases[i].want.thought);
        assert_int_equal(t.usage.cached, cases[i].want.cached);
        assert_int_equal(t.usage.total, cases[i].want.total);
        model_turn_clear(&t);
    }
}

/* A decoded turn appended to the conversation is replayed verbatim in its own format: the
 * round trip that keeps signatures alive. */
static void
test_turn_round_trip(void **state)
{
    static const struct {
        const char *spec, *resp, *path; /* path: where the replayed turn sits */
    } cases[] = {
        { "gemini-x", gemini_resp, "contents" },
        { "anthropic:x", anthropic_resp, "messages" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_turn t;
        struct err *e = NULL;
        struct model_ref m;
        json_t *conv = jl("[{'role':'user','text':'go'}]"), *body;
        struct model_request req = { .model = &m, .messages = conv };
        struct model_enc enc = { .req = &req };

        ASSERT_NO_ERR(decode(cases[i].spec, cases[i].resp, 0, &t, &e), &e);
        json_array_append(conv, t.message);
        ASSERT_NO_ERR(model_parse(cases[i].spec, &m, &e), &e);
        body = model__wire(m.format)->encode(&enc, &e);
        assert_non_null(body);
        assert_true(json_equal(json_array_get(json_object_get(body, cases[i].path), 1),
                               json_object_get(json_object_get(t.message, "native"), "message")));
        json_decref(body);
        json_decref(conv);
        model_turn_clear(&t);
    }
}

/* The upstream's words on an answer that is an error, which model_generate adds to the
 * decoder's error after redacting the key: the decoders themselves never quote them. */
static void
test_why(void **state)
{
    static const struct {
        const char *spec, *resp, *why; /* why NULL: none */
    } cases[] = {
        { "gemini-x", "{'promptFeedback':{'blockReason':'PROHIBITED_CONTENT'}}",
          "blockReason PROHIBITED_CONTENT" },
        { "gemini-x",
          "{'candidates':[],'promptFeedback':{'blockReason':'SAFETY',"
          "'blockReasonMessage':'no'}}",
          "blockReason SAFETY: no" },
        { "gemini-x", "[{'error':{'code':429,'message':'quota'}}]", "quota" },
        { "gemini-x", "{'usageMetadata':{}}", NULL },
        { "openai:x", "{'error':{'message':'model not loaded'}}", "model not loaded" },
        { "openai:x", "{'error':'bad key'}", "bad key" },
        { "openai:x", "{'detail':'Not Found'}", "Not Found" },
        { "openai:x", "{'choices':[]}", NULL },
        { "anthropic:x", "{'type':'error','error':{'type':'overloaded_error','message':'Busy'}}",
          "Busy" },
        { "anthropic:x", "[1]", NULL },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_ref m;
        struct err *e = NULL;
        json_t *r = jl(cases[i].resp);
        char *why;

        ASSERT_NO_ERR(model_parse(cases[i].spec, &m, &e), &e);
        why = model__wire(m.format)->why(r);
        if (cases[i].why == NULL)
            assert_null(why);
        else
            assert_string_equal(why, cases[i].why);
        free(why);
        json_decref(r);
    }
    assert_null(model__wire(MODEL_GEMINI)->why(NULL));
}

/* The key is redacted from upstream text before it is escaped and cut: a key across the cut
 * leaves nothing of itself, a key shorter than 4 bytes is not looked for. */
static void
test_upstream_text(void **state)
{
    static const char key[] = "sk-abcdefghij";
    static const struct {
        const char *s, *secret;
        size_t max;
        const char *want;
    } cases[] = {
        { "bad key sk-abcdefghij, sk-abcdefghij!", key, 512, "bad key [redacted], [redacted]!" },
        /* The key starts before the cut at 12 and ends after it. */
        { "0123456789 sk-abcdefghij tail", key, 12, "0123456789 [..." },
        { "0123456789sk-abcdefghij", key, 12, "0123456789[r..." },
        /* Redaction shortens the text: what follows moves up into the kept part. */
        { "sk-abcdefghijsk-abcdefghijab", key, 22, "[redacted][redacted]ab" },
        { "a\"b\ncsk-abcdefghij", key, 512, "a\\\"b\\nc[redacted]" },
        { "sk-abcdefghi", key, 512, "sk-abcdefghi" },
        { "ab sk-abcdefghij", NULL, 512, "ab sk-abcdefghij" },
        { "ab ab", "ab", 512, "ab ab" },
        { "", key, 512, "" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        char *got =
            model__upstream_text(cases[i].s, strlen(cases[i].s), cases[i].max, cases[i].secret);
        assert_string_equal(got, cases[i].want);
        free(got);
    }
}

int
test_decode_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemini_decode),    cmocka_unit_test(test_gemini_finish_and_errors),
        cmocka_unit_test(test_many_parts),       cmocka_unit_test(test_too_many_values),
        cmocka_unit_test(test_openai_decode),    cmocka_unit_test(test_openai_tolerance),
        cmocka_unit_test(test_anthropic_decode), cmocka_unit_test(test_anthropic_finish_and_errors),
        cmocka_unit_test(test_turn_round_trip),  cmocka_unit_test(test_why),
        cmocka_unit_test(test_upstream_text),    cmocka_unit_test(test_usage_bounds),
    };
    return cmocka_run_group_tests_name("decode", tests, NULL, NULL);
}

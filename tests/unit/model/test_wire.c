/*
 * Tests for the request side of src/model/: gemini.c, openai.c and anthropic.c turning one
 * neutral conversation (user, assistant with calls, tool results, user) into each format's
 * body, compared structurally with the body written out by hand; and the replay of an
 * assistant turn verbatim in its own format versus its rebuild in the others.
 */
#include "model_test.h"

#include "suites.h"

/* The conversation of model.h's comment: a user asks, the assistant says something and calls
 * two tools, one result is an error, the user answers. */
static const char conversation[] =
    "[{'role':'user','text':'List files'},"
    " {'role':'assistant','text':'Looking.','calls':["
    "   {'id':'c1','name':'bash','args':{'command':'ls'}},"
    "   {'id':'c2','name':'bash','args':{'command':'false'}}]},"
    " {'role':'tool','call_id':'c1','name':'bash','output':'a.c\\nb.c','is_error':false},"
    " {'role':'tool','call_id':'c2','name':'bash','output':'boom','is_error':true},"
    " {'role':'user','text':'thanks'}]";

static const char tools[] = "[{'name':'bash','description':'Run','parameters':{'type':'object'}}]";

static const char generation[] = "{'temperature':0.5,'top_p':0.9,'seed':7,'max_output_tokens':100,"
                                 "'stop_sequences':['X']}";

/* Encodes messages (a template) for spec with the tools and generation above. Owned. */
static json_t *
encode(const char *spec, const char *messages, bool hosted, const char *gen)
{
    struct model_ref m;
    struct err *e = NULL;
    json_t *msgs = jl(messages), *t = jl(tools), *g = gen != NULL ? jl(gen) : NULL;
    struct model_request req = {
        .model = &m,
        .system_instruction = "Be brief",
        .messages = msgs,
        .tools = t,
        .generation = g,
    };
    struct model_enc enc = { .req = &req, .hosted = hosted };
    json_t *body;

    ASSERT_NO_ERR(model_parse(spec, &m, &e), &e);
    body = model__wire(m.format)->encode(&enc, &e);
    if (body == NULL)
        fail_msg("encode failed: %s", e != NULL ? e->msg : "?");
    json_decref(msgs);
    json_decref(t);
    json_decref(g);
    return body;
}

static void
test_gemini_encode(void **state)
{
    json_t *body = encode("gemini-2.5-pro", conversation, true, generation);
    (void)state;

    ASSERT_JSON_EQ(body,
                   "{'systemInstruction':{'parts':[{'text':'Be brief'}]},"
                   " 'contents':["
                   "  {'role':'user','parts':[{'text':'List files'}]},"
                   "  {'role':'model','parts':[{'text':'Looking.'},"
                   "    {'functionCall':{'name':'bash','args':{'command':'ls'},'id':'c1'}},"
                   "    {'functionCall':{'name':'bash','args':{'command':'false'},'id':'c2'}}]},"
                   "  {'role':'user','parts':["
                   "    {'functionResponse':{'name':'bash','response':{'output':'a.c\\nb.c'},"
                   "                         'id':'c1'}},"
                   "    {'functionResponse':{'name':'bash','response':{'error':'boom'},"
                   "                         'id':'c2'}}]},"
                   "  {'role':'user','parts':[{'text':'thanks'}]}],"
                   " 'tools':[{'functionDeclarations':[{'name':'bash','description':'Run',"
                   "   'parameters':{'type':'object'}}]}],"
                   " 'toolConfig':{'functionCallingConfig':{'mode':'AUTO'}},"
                   " 'generationConfig':{'temperature':0.5,'topP':0.9,'seed':7,"
                   "   'maxOutputTokens':100,'stopSequences':['X']}}");
    json_decref(body);
}

/* thinking_level becomes a budget for Gemini 2.x and a level for later models;
 * thinking_summaries asks for thought summaries. */
static void
test_gemini_thinking(void **state)
{
    static const char gen[] = "{'thinking_level':'low','thinking_summaries':'auto'}";
    json_t *body = encode("gemini-2.5-flash", "[{'role':'user','text':'hi'}]", true, gen);
    (void)state;

    ASSERT_JSON_EQ(json_object_get(body, "generationConfig"),
                   "{'thinkingConfig':{'thinkingBudget':1024,'includeThoughts':true}}");
    json_decref(body);
    body = encode("gemini-3-pro-preview", "[{'role':'user','text':'hi'}]", true, gen);
    ASSERT_JSON_EQ(json_object_get(body, "generationConfig"),
                   "{'thinkingConfig':{'thinkingLevel':'low','includeThoughts':true}}");
    json_decref(body);
    /* Nothing asked, nothing sent: models without thinking refuse a thinkingConfig. */
    body = encode("gemini-2.0-flash", "[{'role':'user','text':'hi'}]", true, "{}");
    assert_null(json_object_get(body, "generationConfig"));
    json_decref(body);
}

static void
test_openai_encode(void **state)
{
    json_t *body = encode("openai:local", conversation, false, generation);
    (void)state;

    ASSERT_JSON_EQ(body,
                   "{'model':'local','stream':false,'messages':["
                   "  {'role':'system','content':'Be brief'},"
                   "  {'role':'user','content':'List files'},"
                   "  {'role':'assistant','content':'Looking.','tool_calls':["
                   "    {'id':'c1','type':'function',"
                   "     'function':{'name':'bash','arguments':'{`command`:`ls`}'}},"
                   "    {'id':'c2','type':'function',"
                   "     'function':{'name':'bash','arguments':'{`command`:`false`}'}}]},"
                   "  {'role':'tool','tool_call_id':'c1','content':'a.c\\nb.c'},"
                   "  {'role':'tool','tool_call_id':'c2','content':'Error: boom'},"
                   "  {'role':'user','content':'thanks'}],"
                   " 'tools':[{'type':'function','function':{'name':'bash','description':'Run',"
                   "   'parameters':{'type':'object'}}}],"
                   " 'tool_choice':'auto','temperature':0.5,'top_p':0.9,'seed':7,'stop':['X'],"
                   " 'max_tokens':100}");
    json_decref(body);
    /* The hosted endpoint gets the field OpenAI's reasoning models accept. */
    body = encode("openai:gpt-5", "[{'role':'user','text':'hi'}]", true,
                  "{'max_output_tokens':5,'thinking_level':'low'}");
    assert_null(json_object_get(body, "max_tokens"));
    assert_int_equal(json_integer_value(json_object_get(body, "max_completion_tokens")), 5);
    assert_string_equal(json_string_value(json_object_get(body, "reasoning_effort")), "low");
    json_decref(body);
}

static void
test_anthropic_encode(void **state)
{
    json_t *body = encode("anthropic:claude-x", conversation, true, generation);
    (void)state;

    /* Results and the following user text share one user turn; top_p gives way to
     * temperature; seed has no Anthropic equivalent. */
    ASSERT_JSON_EQ(
        body, "{'model':'claude-x','max_tokens':100,'system':'Be brief','stream':false,"
              " 'messages':["
              "  {'role':'user','content':[{'type':'text','text':'List files'}]},"
              "  {'role':'assistant','content':["
              "    {'type':'text','text':'Looking.'},"
              "    {'type':'tool_use','id':'c1','name':'bash','input':{'command':'ls'}},"
              "    {'type':'tool_use','id':'c2','name':'bash','input':{'command':'false'}}]},"
              "  {'role':'user','content':["
              "    {'type':'tool_result','tool_use_id':'c1','content':'a.c\\nb.c',"
              "     'is_error':false},"
              "    {'type':'tool_result','tool_use_id':'c2','content':'boom',"
              "     'is_error':true},"
              "    {'type':'text','text':'thanks'}]}],"
              " 'tools':[{'name':'bash','description':'Run','input_schema':{'type':'object'}}],"
              " 'temperature':0.5,'stop_sequences':['X']}");
    json_decref(body);
    /* No generation config: the required max_tokens has its default; thinking drops the
     * temperature. */
    body = encode("anthropic:claude-x", "[{'role':'user','text':'hi'}]", true, NULL);
    assert_int_equal(json_integer_value(json_object_get(body, "max_tokens")),
                     MODEL_ANTHROPIC_MAX_TOKENS);
    json_decref(body);
    body = encode("anthropic:claude-x", "[{'role':'user','text':'hi'}]", true,
                  "{'thinking_level':'low','temperature':0.2}");
    ASSERT_JSON_EQ(json_object_get(body, "thinking"), "{'type':'enabled','budget_tokens':4096}");
    assert_null(json_object_get(body, "temperature"));
    json_decref(body);
}

/* ------------------------------------------------------------------ replay */

/* A Gemini turn with a signature, a call without id and a part this code does not know. */
static const char gemini_turn[] =
    "[{'role':'user','text':'go'},"
    " {'role':'assistant','text':'hi','calls':[{'id':'call_1','name':'bash','args':{}}],"
    "  'native':{'format':'gemini','message':{'role':'model','parts':["
    "    {'text':'hi','thoughtSignature':'SIG'},"
    "    {'functionCall':{'name':'bash','args':{}}},"
    "    {'futurePart':{'x':1}}]}}},"
    " {'role':'tool','call_id':'call_1','name':'bash','output':'ok'}]";

static void
test_gemini_native_replay(void **state)
{
    json_t *body = encode("gemini-2.5-flash", gemini_turn, true, NULL);
    json_t *contents = json_object_get(body, "contents");
    (void)state;

    /* Verbatim, signature and unknown part included; the response has no id because the call
     * had none. */
    ASSERT_JSON_EQ(json_array_get(contents, 1),
                   "{'role':'model','parts':[{'text':'hi','thoughtSignature':'SIG'},"
                   " {'functionCall':{'name':'bash','args':{}}},{'futurePart':{'x':1}}]}");
    ASSERT_JSON_EQ(json_array_get(contents, 2),
                   "{'role':'user','parts':[{'functionResponse':{'name':'bash',"
                   " 'response':{'output':'ok'}}}]}");
    json_decref(body);

    /* Rebuilt for the other formats from the neutral fields, with the made-up id. */
    body = encode("openai:x", gemini_turn, false, NULL);
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 2),
                   "{'role':'assistant','content':'hi','tool_calls':[{'id':'call_1',"
                   " 'type':'function','function':{'name':'bash','arguments':'{}'}}]}");
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 3),
                   "{'role':'tool','tool_call_id':'call_1','content':'ok'}");
    json_decref(body);
    body = encode("anthropic:x", gemini_turn, true, NULL);
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 1),
                   "{'role':'assistant','content':[{'type':'text','text':'hi'},"
                   " {'type':'tool_use','id':'call_1','name':'bash','input':{}}]}");
    json_decref(body);
}

/* A Claude turn with thinking (signed), redacted thinking and a tool_use. */
static const char anthropic_turn[] =
    "[{'role':'user','text':'go'},"
    " {'role':'assistant','thought':'hmm','calls':[{'id':'toolu_1','name':'bash',"
    "   'args':{'command':'ls'}}],"
    "  'native':{'format':'anthropic','message':{'role':'assistant','content':["
    "    {'type':'thinking','thinking':'hmm','signature':'S1'},"
    "    {'type':'redacted_thinking','data':'opaque'},"
    "    {'type':'tool_use','id':'toolu_1','name':'bash','input':{'command':'ls'}}]}}},"
    " {'role':'tool','call_id':'toolu_1','name':'bash','output':'a'}]";

static void
test_anthropic_native_replay(void **state)
{
    json_t *body = encode("anthropic:claude-x", anthropic_turn, true, NULL);
    (void)state;

    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 1),
                   "{'role':'assistant','content':["
                   " {'type':'thinking','thinking':'hmm','signature':'S1'},"
                   " {'type':'redacted_thinking','data':'opaque'},"
                   " {'type':'tool_use','id':'toolu_1','name':'bash','input':{'command':'ls'}}]}");
    json_decref(body);
    /* For Gemini the thought is not carried (no signature Gemini knows), the id is. */
    body = encode("gemini-2.5-pro", anthropic_turn, true, NULL);
    ASSERT_JSON_EQ(json_object_get(body, "contents"),
                   "[{'role':'user','parts':[{'text':'go'}]},"
                   " {'role':'model','parts':[{'functionCall':{'name':'bash',"
                   "   'args':{'command':'ls'},'id':'toolu_1'}}]},"
                   " {'role':'user','parts':[{'functionResponse':{'name':'bash',"
                   "   'response':{'output':'a'},'id':'toolu_1'}}]}]");
    json_decref(body);
}

/*
 * Gemini 3 refuses a model turn whose first call has no thoughtSignature: a turn from another
 * format gets Gemini's placeholder on its first call, a Gemini turn without a signature on its
 * calls too (its text's signature is not the call's), and a signed call keeps its signature.
 * Gemini 2 gets the turns as they were.
 */
static void
test_gemini3_unsigned_calls(void **state)
{
    static const char signed_turn[] =
        "[{'role':'user','text':'go'},"
        " {'role':'assistant','calls':[{'id':'c1','name':'bash','args':{}},"
        "                              {'id':'c2','name':'ls','args':{}}],"
        "  'native':{'format':'gemini','message':{'role':'model','parts':["
        "    {'functionCall':{'name':'bash','args':{}},'thoughtSignature':'REAL'},"
        "    {'functionCall':{'name':'ls','args':{}}}]}}},"
        " {'role':'tool','call_id':'c1','name':'bash','output':'a'},"
        " {'role':'tool','call_id':'c2','name':'ls','output':'b'}]";
    json_t *body = encode("gemini-3-pro-preview", anthropic_turn, true, NULL);
    (void)state;

    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "contents"), 1),
                   "{'role':'model','parts':[{'functionCall':{'name':'bash',"
                   "   'args':{'command':'ls'},'id':'toolu_1'},"
                   "  'thoughtSignature':'skip_thought_signature_validator'}]}");
    json_decref(body);
    body = encode("gemini-3-flash-preview", gemini_turn, true, NULL);
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "contents"), 1),
                   "{'role':'model','parts':[{'text':'hi','thoughtSignature':'SIG'},"
                   " {'functionCall':{'name':'bash','args':{}},"
                   "  'thoughtSignature':'skip_thought_signature_validator'},"
                   " {'futurePart':{'x':1}}]}");
    json_decref(body);
    body = encode("gemini-3-pro-preview", signed_turn, true, NULL);
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "contents"), 1),
                   "{'role':'model','parts':["
                   " {'functionCall':{'name':'bash','args':{}},'thoughtSignature':'REAL'},"
                   " {'functionCall':{'name':'ls','args':{}}}]}");
    json_decref(body);
    body = encode("gemini-2.5-pro", anthropic_turn, true, NULL);
    assert_null(json_object_get(
        json_array_get(
            json_object_get(json_array_get(json_object_get(body, "contents"), 1), "parts"), 0),
        "thoughtSignature"));
    json_decref(body);
}

/* An OpenAI turn from a local server: no tool-call id, arguments that are not JSON. */
static const char openai_turn[] =
    "[{'role':'user','text':'go'},"
    " {'role':'assistant','calls':[{'id':'call_1','name':'bash','args_text':'{oops',"
    "   'args_error':'bad'}],"
    "  'native':{'format':'openai','message':{'role':'assistant','content':null,"
    "    'refusal':null,'annotations':[],'reasoning_content':'think','tool_calls':["
    "    {'type':'function','index':0,'function':{'name':'bash','arguments':'{oops'}}]}}},"
    " {'role':'tool','call_id':'call_1','name':'bash','output':'x','is_error':true}]";

static void
test_openai_native_replay(void **state)
{
    json_t *body = encode("openai:local", openai_turn, false, NULL);
    (void)state;

    /* Kept as sent, but with the made-up id, arguments the server can parse, and without the
     * fields a request may not carry (annotations, index) or that are null (refusal). */
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 2),
                   "{'role':'assistant','content':null,'reasoning_content':'think',"
                   " 'tool_calls':[{'id':'call_1','type':'function',"
                   "   'function':{'name':'bash','arguments':'{}'}}]}");
    json_decref(body);
    /* Rebuilt for Anthropic: the arguments that were not an object become {}. */
    body = encode("anthropic:x", openai_turn, true, NULL);
    ASSERT_JSON_EQ(json_array_get(json_object_get(body, "messages"), 1),
                   "{'role':'assistant','content':[{'type':'tool_use','id':'call_1',"
                   " 'name':'bash','input':{}}]}");
    json_decref(body);
}

/* Ids from another format that Anthropic's pattern refuses are mapped the same way on both
 * sides; empty assistant turns are left out (Anthropic and Gemini refuse them). */
static void
test_ids_and_empty_turns(void **state)
{
    const char *conv = "[{'role':'user','text':'go'},"
                       " {'role':'assistant','calls':[{'id':'fc/1.2','name':'bash'}]},"
                       " {'role':'tool','call_id':'fc/1.2','name':'bash','output':''},"
                       " {'role':'assistant'},"
                       " {'role':'user','text':'more'}]";
    json_t *body = encode("anthropic:x", conv, true, NULL);
    (void)state;

    ASSERT_JSON_EQ(json_object_get(body, "messages"),
                   "[{'role':'user','content':[{'type':'text','text':'go'}]},"
                   " {'role':'assistant','content':[{'type':'tool_use','id':'fc_1_2',"
                   "   'name':'bash','input':{}}]},"
                   " {'role':'user','content':[{'type':'tool_result','tool_use_id':'fc_1_2',"
                   "   'is_error':false},{'type':'text','text':'more'}]}]");
    json_decref(body);
    body = encode("gemini-x", conv, true, NULL);
    assert_int_equal(json_array_size(json_object_get(body, "contents")), 4);
    json_decref(body);
    /* An empty error result still says something. */
    body = encode("anthropic:x",
                  "[{'role':'user','text':'go'},"
                  " {'role':'assistant','calls':[{'id':'c','name':'bash'}]},"
                  " {'role':'tool','call_id':'c','name':'bash','output':'','is_error':true}]",
                  true, NULL);
    ASSERT_JSON_EQ(
        json_array_get(
            json_object_get(json_array_get(json_object_get(body, "messages"), 2), "content"), 0),
        "{'type':'tool_result','tool_use_id':'c','is_error':true,"
        " 'content':'(no output)'}");
    json_decref(body);
}

/* A malformed conversation is refused with the index and field, by every format. */
static void
test_bad_messages(void **state)
{
    static const struct {
        const char *messages, *want;
    } cases[] = {
        { "[{'text':'x'}]", "messages[0].role: missing" },
        { "[{'role':'system','text':'x'}]", "messages[0].role: \"system\" is not user" },
        { "[{'role':'user'}]", "messages[0].text: missing" },
        { "[{'role':'user','text':'a'},{'role':'tool','name':'b','output':'c'}]",
          "messages[1].call_id: missing" },
        { "[{'role':'assistant','calls':[{'name':'x'}]}]", "messages[0].calls[0]" },
        { "[{'role':'assistant','calls':{}}]", "messages[0].calls: not an array" },
        { "[{'role':'assistant','native':{'format':'gemini'}}]", "messages[0].native" },
        { "[3]", "messages[0]: not an object" },
    };
    static const char *const specs[] = { "gemini-x", "openai:x", "anthropic:x" };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        for (size_t s = 0; s < ARRAY_LEN(specs); s++) {
            struct model_ref m;
            struct err *e = NULL;
            json_t *msgs = jl(cases[i].messages);
            struct model_request req = { .model = &m, .messages = msgs };
            struct model_enc enc = { .req = &req };
            ASSERT_NO_ERR(model_parse(specs[s], &m, &e), &e);
            assert_null(model__wire(m.format)->encode(&enc, &e));
            ASSERT_ERR_CONTAINS(&e, ERR_INVALID, cases[i].want);
            json_decref(msgs);
        }
    }
}

/* ------------------------------------------------------------- model_parse */

static void
test_model_parse(void **state)
{
    static const struct {
        const char *spec;
        int format; /* -1: refused */
        const char *name, *why;
    } cases[] = {
        { "gemini-2.5-pro", MODEL_GEMINI, "gemini-2.5-pro", NULL },
        { "openai:gpt-4o", MODEL_OPENAI, "gpt-4o", NULL },
        { "openai:qwen2.5:7b", MODEL_OPENAI, "qwen2.5:7b", NULL },
        { "openai:meta-llama/Llama-3-8B", MODEL_OPENAI, "meta-llama/Llama-3-8B", NULL },
        { "anthropic:claude-sonnet-4-5", MODEL_ANTHROPIC, "claude-sonnet-4-5", NULL },
        { "", -1, NULL, "empty" },
        { "gpt-4o", -1, NULL, "expected gemini-" },
        { "gemini-", -1, NULL, "Gemini model name" },
        { "gemini-2.5/../x", -1, NULL, "Gemini model name" },
        { "gemini-a?key=b", -1, NULL, "Gemini model name" },
        { "openai:", -1, NULL, "empty" },
        { "anthropic:a b", -1, NULL, "space" },
        { "openai:a\nb", -1, NULL, "a\\nb" },
        { "Gemini-2.5-pro", -1, NULL, "unknown" },
    };
    (void)state;

    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct model_ref m;
        struct err *e = NULL;
        int rc = model_parse(cases[i].spec, &m, &e);
        if (cases[i].format < 0) {
            assert_int_equal(rc, -1);
            ASSERT_ERR_CONTAINS(&e, ERR_INVALID, cases[i].why);
            continue;
        }
        ASSERT_NO_ERR(rc, &e);
        assert_int_equal(m.format, cases[i].format);
        assert_string_equal(m.name, cases[i].name);
        assert_string_equal(m.spec, cases[i].spec);
    }
    {
        char long_spec[300];
        struct model_ref m;
        struct err *e = NULL;
        memset(long_spec, 'a', sizeof(long_spec) - 1);
        memcpy(long_spec, "openai:", 7);
        long_spec[sizeof(long_spec) - 1] = '\0';
        assert_int_equal(model_parse(long_spec, &m, &e), -1);
        ASSERT_ERR_CONTAINS(&e, ERR_INVALID, "longer than");
        assert_int_equal(model_parse(NULL, &m, &e), -1);
        ASSERT_ERR(&e, ERR_INVALID);
    }
}

int
test_wire_run(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gemini_encode),
        cmocka_unit_test(test_gemini_thinking),
        cmocka_unit_test(test_openai_encode),
        cmocka_unit_test(test_anthropic_encode),
        cmocka_unit_test(test_gemini_native_replay),
        cmocka_unit_test(test_anthropic_native_replay),
        cmocka_unit_test(test_gemini3_unsigned_calls),
        cmocka_unit_test(test_openai_native_replay),
        cmocka_unit_test(test_ids_and_empty_turns),
        cmocka_unit_test(test_bad_messages),
        cmocka_unit_test(test_model_parse),
    };
    return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}

//! Generation against a toy decoder whose next-token logits are an explicit function of the token
//! history, so every expected sequence and log-probability can be computed by hand.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;

use candle_core::{Device, Tensor};
use minigpt4_core::generate::{generate, Decoder, FinishReason, Generation, GenerationConfig};
use minigpt4_core::{Error, Result};

type Table = Box<dyn Fn(&[u32]) -> Vec<f32>>;

/// Embeddings are one-hot rows; the "model" reads the token ids back out of them and returns
/// `table(history)`, where history is everything in the cache (prompt included).
struct Toy {
    vocab: usize,
    table: Table,
    /// Tokens of each multi-position forward (the prompt), as the decoder saw them.
    prompts_seen: RefCell<Vec<Vec<u32>>>,
    forwards: Cell<usize>,
}

#[derive(Clone)]
struct ToyCache(Vec<u32>);

impl Toy {
    fn new(vocab: usize, table: impl Fn(&[u32]) -> Vec<f32> + 'static) -> Self {
        Toy { vocab, table: Box::new(table), prompts_seen: RefCell::default(), forwards: Cell::new(0) }
    }

    fn prompt(&self, ids: &[u32]) -> Tensor {
        self.embed_tokens(ids).unwrap()
    }
}

impl Decoder for Toy {
    type Cache = ToyCache;

    fn new_cache(&self) -> Result<ToyCache> {
        Ok(ToyCache(Vec::new()))
    }

    fn embed_tokens(&self, ids: &[u32]) -> Result<Tensor> {
        let mut data = vec![0f32; ids.len() * self.vocab];
        for (row, &id) in ids.iter().enumerate() {
            data[row * self.vocab + id as usize] = 1.0;
        }
        Ok(Tensor::from_vec(data, (1, ids.len(), self.vocab), &Device::Cpu)?)
    }

    fn forward_embeds(&self, embeds: &Tensor, cache: &mut ToyCache) -> Result<Tensor> {
        self.forwards.set(self.forwards.get() + 1);
        let ids = embeds.squeeze(0)?.argmax(1)?.to_vec1::<u32>()?;
        if cache.0.is_empty() {
            self.prompts_seen.borrow_mut().push(ids.clone());
        }
        cache.0.extend(ids);
        Ok(Tensor::new((self.table)(&cache.0), &Device::Cpu)?)
    }
}

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = v.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    v.iter().map(|&x| x as f64 - lse).collect()
}

/// Exact log-probability of `generated` after `prompt` under the toy's table.
fn seq_logprob(toy: &Toy, prompt: &[u32], generated: &[u32]) -> f64 {
    let mut hist = prompt.to_vec();
    let mut total = 0.0;
    for &t in generated {
        total += log_softmax(&(toy.table)(&hist))[t as usize];
        hist.push(t);
    }
    total
}

/// Greedy continuation computed directly from the table.
fn argmax_rollout(toy: &Toy, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut hist = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..n {
        let l = (toy.table)(&hist);
        let mut best = 0;
        for i in 0..l.len() {
            if l[i] > l[best] {
                best = i;
            }
        }
        out.push(best as u32);
        hist.push(best as u32);
    }
    out
}

/// A table with no structure a test relies on but a distinct argmax per history.
fn hashy(vocab: usize) -> impl Fn(&[u32]) -> Vec<f32> {
    move |h: &[u32]| {
        let seed = h.iter().fold(17u64, |a, &t| a.wrapping_mul(31).wrapping_add(t as u64 + 1));
        (0..vocab as u64)
            .map(|i| {
                let x = seed.wrapping_mul(6364136223846793005).wrapping_add(i.wrapping_mul(1442695040888963407));
                ((x >> 40) % 1000) as f32 / 250.0
            })
            .collect()
    }
}

fn letters(ids: &[u32]) -> Result<String> {
    Ok(ids.iter().map(|&i| (b'a' + i as u8) as char).collect())
}

fn base_cfg() -> GenerationConfig {
    GenerationConfig { repetition_penalty: 1.0, max_new_tokens: 8, ..Default::default() }
}

fn greedy_cfg() -> GenerationConfig {
    GenerationConfig { temperature: 0.0, ..base_cfg() }
}

fn run(toy: &Toy, prompt: &[u32], cfg: &GenerationConfig) -> Generation {
    run_with(toy, prompt, cfg, &letters).0
}

fn run_with(
    toy: &Toy,
    prompt: &[u32],
    cfg: &GenerationConfig,
    decode: &dyn Fn(&[u32]) -> Result<String>,
) -> (Generation, Vec<String>) {
    let mut pieces = Vec::new();
    let g = generate(toy, &toy.prompt(prompt), cfg, decode, &mut |s: &str| {
        pieces.push(s.to_string());
        ControlFlow::Continue(())
    })
    .unwrap();
    (g, pieces)
}

/// Forces a fixed continuation: at generated step i the logit of `seq[i]` is high.
fn scripted(vocab: usize, prompt_len: usize, seq: Vec<u32>) -> Toy {
    Toy::new(vocab, move |h: &[u32]| {
        let step = h.len() - prompt_len;
        let mut l = vec![0.0; vocab];
        if let Some(&t) = seq.get(step) {
            l[t as usize] = 10.0;
        }
        l
    })
}

#[test]
fn greedy_picks_the_argmax() {
    let toy = Toy::new(12, hashy(12));
    let prompt = [3, 1, 4];
    let g = run(&toy, &prompt, &greedy_cfg());
    assert_eq!(g.token_ids, argmax_rollout(&toy, &prompt, 8));
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.prompt_len, 3);
    assert_eq!(g.text, letters(&g.token_ids).unwrap());
    // One forward for the prompt, one per generated token but the last.
    assert_eq!(toy.forwards.get(), 8);
}

#[test]
fn seeded_sampling_is_reproducible_and_seeds_differ() {
    let toy = Toy::new(8, |_: &[u32]| vec![0.0; 8]);
    let cfg = |seed| GenerationConfig { seed: Some(seed), top_p: 1.0, max_new_tokens: 32, ..base_cfg() };
    let a = run(&toy, &[0], &cfg(7));
    let b = run(&toy, &[0], &cfg(7));
    let c = run(&toy, &[0], &cfg(8));
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids);
}

#[test]
fn sampling_follows_the_distribution_and_top_p_cuts_the_tail() {
    let probs = [0.6f32, 0.3, 0.1];
    let toy = Toy::new(3, move |_: &[u32]| probs.iter().map(|p| p.ln()).collect());
    let n = 4000;
    let cfg = GenerationConfig { seed: Some(1), top_p: 1.0, max_new_tokens: n, max_context: n + 10, ..base_cfg() };
    let g = run(&toy, &[0], &cfg);
    let freq = |ids: &[u32], t: u32| ids.iter().filter(|&&x| x == t).count() as f64 / ids.len() as f64;
    for t in 0..3 {
        assert!((freq(&g.token_ids, t) - probs[t as usize] as f64).abs() < 0.03, "token {t}");
    }
    // Nucleus 0.8 keeps {0, 1} (0.6 < 0.8 <= 0.9) and renormalises them to 2:1.
    let g = run(&toy, &[0], &GenerationConfig { top_p: 0.8, ..cfg.clone() });
    assert_eq!(freq(&g.token_ids, 2), 0.0);
    assert!((freq(&g.token_ids, 0) - 2.0 / 3.0).abs() < 0.03);
    // Temperature 0.5 squares the odds: 0.36 : 0.09 : 0.01.
    let g = run(&toy, &[0], &GenerationConfig { temperature: 0.5, ..cfg });
    assert!((freq(&g.token_ids, 0) - 0.36 / 0.46).abs() < 0.03);
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let toy = Toy::new(12, hashy(12));
    let greedy = run(&toy, &[5], &greedy_cfg()).token_ids;
    for seed in 0..5 {
        let k1 = GenerationConfig { seed: Some(seed), top_k: 1, top_p: 1.0, ..base_cfg() };
        assert_eq!(run(&toy, &[5], &k1).token_ids, greedy);
        let p0 = GenerationConfig { seed: Some(seed), top_p: 1e-6, ..base_cfg() };
        assert_eq!(run(&toy, &[5], &p0).token_ids, greedy);
    }
    // Sampling without these filters does wander off the greedy path on this table.
    let free = GenerationConfig { seed: Some(0), top_p: 1.0, ..base_cfg() };
    assert_ne!(run(&toy, &[5], &free).token_ids, greedy);
}

#[test]
fn repetition_penalty_changes_a_repeated_choice() {
    let pos = Toy::new(3, |_: &[u32]| vec![2.0, 1.9, -5.0]);
    let neg = Toy::new(3, |_: &[u32]| vec![-1.0, -1.1, -5.0]);
    let cfg = GenerationConfig { max_new_tokens: 4, ..greedy_cfg() };
    for toy in [&pos, &neg] {
        assert_eq!(run(toy, &[2], &cfg).token_ids, vec![0, 0, 0, 0]);
        // After "a": 2/1.2 = 1.67 < 1.9 (resp. -1.2 < -1.1), so "b"; once both are penalized "a" leads again.
        let penalized = GenerationConfig { repetition_penalty: 1.2, ..cfg.clone() };
        assert_eq!(run(toy, &[2], &penalized).token_ids, vec![0, 1, 0, 0]);
    }
    // The prompt is embeddings only: its ids are not penalized.
    let penalized = GenerationConfig { repetition_penalty: 1.2, max_new_tokens: 1, ..greedy_cfg() };
    assert_eq!(run(&pos, &[0, 0], &penalized).token_ids, vec![0]);
}

/// Greedy takes A (0.6) and then faces a three-way tie; B (0.4) leads to C with 0.9.
fn myopic() -> Toy {
    let ln = |p: &[f32]| p.iter().map(|x| x.ln()).collect::<Vec<f32>>();
    const P: u32 = 5;
    Toy::new(6, move |h: &[u32]| {
        let eps = 1e-4;
        match (h.len(), h[h.len() - 1]) {
            (1, P) => ln(&[0.6 - 2.0 * eps, 0.4 - 2.0 * eps, eps, eps, eps, eps]),
            (_, 0) => ln(&[eps, eps, 0.333, 0.333, 0.333, eps]),
            (_, 1) => ln(&[eps, eps, 0.9, 0.05, 0.05, eps]),
            _ => vec![0.0; 6],
        }
    })
}

#[test]
fn beam_search_beats_myopic_greedy() {
    let toy = myopic();
    let cfg = GenerationConfig { max_new_tokens: 2, ..greedy_cfg() };
    let greedy = run(&toy, &[5], &cfg);
    assert_eq!(greedy.token_ids, vec![0, 2]);
    let beam = run(&toy, &[5], &GenerationConfig { num_beams: 2, ..cfg });
    assert_eq!(beam.token_ids, vec![1, 2]);
    assert_eq!(beam.finish_reason, FinishReason::Length);
    let (lg, lb) = (seq_logprob(&toy, &[5], &greedy.token_ids), seq_logprob(&toy, &[5], &beam.token_ids));
    assert!(lb > lg + 0.5, "beam {lb} vs greedy {lg}");
    // No two-token sequence is more likely than the beam's.
    for a in 0..6 {
        for b in 0..6 {
            assert!(seq_logprob(&toy, &[5], &[a, b]) <= lb + 1e-9);
        }
    }
}

#[test]
fn one_beam_is_greedy_and_beams_agree_when_greedy_is_optimal() {
    let toy = Toy::new(12, hashy(12));
    let greedy = run(&toy, &[2], &greedy_cfg());
    let one = run(&toy, &[2], &GenerationConfig { num_beams: 1, ..greedy_cfg() });
    assert_eq!(one.token_ids, greedy.token_ids);
    // A table where the argmax token is certain: every beam width must find the greedy path.
    let sharp = Toy::new(12, move |h: &[u32]| {
        let mut l = hashy(12)(h);
        let best = (0..12).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        l[best] += 20.0;
        l
    });
    let greedy = run(&sharp, &[2], &greedy_cfg());
    for k in 2..=4 {
        let beam = run(&sharp, &[2], &GenerationConfig { num_beams: k, ..greedy_cfg() });
        assert_eq!(beam.token_ids, greedy.token_ids, "beams {k}");
    }
}

#[test]
fn beam_search_scores_finished_hypotheses_with_length_penalty() {
    // Step 0: EOS 0.6 or A 0.4; after A: B 0.9; after B: EOS ~1. Hypotheses:
    //   [EOS]       sum ln 0.6            = -0.511, length 1 (EOS not counted, at least 1)
    //   [A, B, EOS] sum ln .4 + ln .9 + ~0 = -1.02, length 2
    // length_penalty 0 ranks by sum (EOS first); 2 divides by 4 (-0.255 beats -0.511).
    const EOS: u32 = 3;
    let eps = 1e-6f32;
    let toy = Toy::new(5, move |h: &[u32]| {
        let ln = |p: [f32; 5]| p.iter().map(|x| x.ln()).collect::<Vec<f32>>();
        match (h.len(), h[h.len() - 1]) {
            (1, _) => ln([0.4, eps, eps, 0.6, eps]),
            (_, 0) => ln([eps, 0.9, eps, eps, 0.1]),
            (_, 1) => ln([eps, eps, eps, 1.0, eps]),
            _ => ln([0.25, 0.25, 0.25, eps, 0.25]),
        }
    });
    let cfg = |lp| GenerationConfig {
        num_beams: 2,
        length_penalty: lp,
        eos_token_ids: vec![EOS],
        max_new_tokens: 5,
        ..greedy_cfg()
    };
    let short = run(&toy, &[4], &cfg(0.0));
    assert_eq!(short.token_ids, vec![EOS]);
    assert_eq!(short.text, "");
    assert_eq!(short.finish_reason, FinishReason::Stop);
    let long = run(&toy, &[4], &cfg(2.0));
    assert_eq!(long.token_ids, vec![0, 1, EOS]);
    assert_eq!(long.text, "ab");
    assert_eq!(long.finish_reason, FinishReason::Stop);
}

#[test]
fn beam_search_streams_once_and_honours_stop_strings() {
    let toy = scripted(6, 1, vec![0, 1, 2, 2, 3, 4]);
    let cfg = GenerationConfig { num_beams: 3, stop_strings: vec!["cc".into()], max_new_tokens: 6, ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[5], &cfg, &letters);
    // "abcc": the text ends where "cc" begins.
    assert_eq!(g.text, "ab");
    assert_eq!(g.token_ids, vec![0, 1, 2, 2]);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(pieces, vec!["ab".to_string()]);
}

fn words(ids: &[u32]) -> Result<String> {
    const W: [&str; 8] = ["He", "llo", " #", "#", "#x", "!", " ", "P"];
    Ok(ids.iter().map(|&i| W[i as usize]).collect())
}

#[test]
fn stop_string_is_removed_and_never_streamed() {
    // "He" "llo" " #" "#" "#" → "Hello ###"
    let toy = scripted(8, 1, vec![0, 1, 2, 3, 3, 5, 5]);
    let cfg = GenerationConfig { stop_strings: vec!["###".into()], ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[7], &cfg, &words);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.text, "Hello ");
    assert_eq!(g.token_ids, vec![0, 1, 2, 3, 3]);
    assert_eq!(pieces.concat(), g.text);
    assert!(pieces.iter().all(|p| !p.contains('#')), "{pieces:?}");
    assert_eq!(pieces, vec!["He", "llo", " "]);
}

#[test]
fn a_held_stop_prefix_is_released_when_it_turns_out_not_to_stop() {
    // "He" "llo" " #" "#x" "!" "!" → "Hello ##x!!"
    let toy = scripted(8, 1, vec![0, 1, 2, 4, 5, 5]);
    let cfg = GenerationConfig { stop_strings: vec!["###".into()], max_new_tokens: 6, ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[7], &cfg, &words);
    assert_eq!(g.finish_reason, FinishReason::Length);
    assert_eq!(g.text, "Hello ##x!!");
    assert_eq!(pieces, vec!["He", "llo", " ##x", "!", "!"]);
}

#[test]
fn trailing_whitespace_is_flushed_at_the_end() {
    let toy = scripted(8, 1, vec![0, 6, 6]);
    let cfg = GenerationConfig { max_new_tokens: 3, ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[7], &cfg, &words);
    assert_eq!(g.text, "He  ");
    assert_eq!(pieces, vec!["He", "  "]);
}

#[test]
fn streaming_never_splits_a_utf8_character() {
    // Tokens are bytes: "é" = C3 A9, "€" = E2 82 AC.
    let bytes: Vec<u8> = "aé€b".bytes().collect();
    let vocab: Vec<u8> = vec![b'a', 0xC3, 0xA9, 0xE2, 0x82, 0xAC, b'b', b'P'];
    let script: Vec<u32> = bytes.iter().map(|b| vocab.iter().position(|v| v == b).unwrap() as u32).collect();
    let n = script.len();
    let toy = scripted(vocab.len(), 1, script);
    let decode = move |ids: &[u32]| -> Result<String> {
        let raw: Vec<u8> = ids.iter().map(|&i| vocab[i as usize]).collect();
        Ok(String::from_utf8_lossy(&raw).into_owned())
    };
    let cfg = GenerationConfig { max_new_tokens: n, ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[7], &cfg, &decode);
    assert_eq!(g.text, "aé€b");
    assert_eq!(pieces, vec!["a", "é", "€", "b"]);
}

#[test]
fn stop_token_sequence_stops_and_its_text_is_never_streamed() {
    // Stop on [c, d]. A lone "c" followed by "b" is not a stop and is streamed late.
    let toy = scripted(6, 1, vec![0, 2, 1, 2, 3, 4, 4]);
    let cfg = GenerationConfig { stop_token_sequences: vec![vec![2, 3]], ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[5], &cfg, &letters);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.token_ids, vec![0, 2, 1, 2, 3]);
    assert_eq!(g.text, "acb");
    assert_eq!(pieces, vec!["a", "cb"]);
}

#[test]
fn eos_stops_and_is_never_decoded() {
    const EOS: u32 = 4;
    let toy = scripted(6, 1, vec![0, 1, EOS, 2, 2]);
    let decode = |ids: &[u32]| -> Result<String> {
        if ids.contains(&EOS) {
            return Err(Error::Generation("EOS passed to decode".into()));
        }
        letters(ids)
    };
    let cfg = GenerationConfig { eos_token_ids: vec![9, EOS], ..greedy_cfg() };
    let (g, pieces) = run_with(&toy, &[5], &cfg, &decode);
    assert_eq!(g.finish_reason, FinishReason::Stop);
    assert_eq!(g.token_ids, vec![0, 1, EOS]);
    assert_eq!(g.text, "ab");
    assert_eq!(pieces.concat(), "ab");
    // EOS as the first token: empty answer.
    let toy = scripted(6, 1, vec![EOS]);
    let (g, pieces) = run_with(&toy, &[5], &cfg, &decode);
    assert_eq!((g.token_ids, g.text, pieces.len()), (vec![EOS], String::new(), 0));
}

#[test]
fn context_cap_keeps_the_newest_prompt_positions() {
    let toy = Toy::new(12, hashy(12));
    let prompt: Vec<u32> = (0..10).collect();
    let cfg = GenerationConfig { max_new_tokens: 3, max_context: 8, ..greedy_cfg() };
    let g = run(&toy, &prompt, &cfg);
    assert_eq!(g.prompt_len, 5);
    assert_eq!(toy.prompts_seen.borrow().as_slice(), &[vec![5, 6, 7, 8, 9]]);
    // Under the cap nothing is dropped.
    let toy = Toy::new(12, hashy(12));
    let g = run(&toy, &prompt, &GenerationConfig { max_context: 13, ..cfg.clone() });
    assert_eq!(g.prompt_len, 10);
    assert_eq!(toy.prompts_seen.borrow()[0], prompt);
    // The beam path caps the same way.
    let toy = Toy::new(12, hashy(12));
    let g = run(&toy, &prompt, &GenerationConfig { num_beams: 2, ..cfg.clone() });
    assert_eq!(g.prompt_len, 5);
    assert_eq!(toy.prompts_seen.borrow()[0], vec![5, 6, 7, 8, 9]);
    // No room for any prompt position.
    let err = generate(&toy, &toy.prompt(&prompt), &GenerationConfig { max_context: 3, ..cfg }, &letters, &mut |_| {
        ControlFlow::Continue(())
    });
    assert!(matches!(err, Err(Error::Generation(_))));
}

#[test]
fn cancel_stops_generation_with_what_was_streamed() {
    let toy = scripted(6, 1, vec![0, 1, 2, 3, 4, 0, 1, 2]);
    let mut pieces = Vec::new();
    let g = generate(&toy, &toy.prompt(&[5]), &greedy_cfg(), &letters, &mut |s: &str| {
        pieces.push(s.to_string());
        if pieces.len() == 2 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(g.finish_reason, FinishReason::Cancelled);
    assert_eq!(g.token_ids, vec![0, 1]);
    assert_eq!(g.text, "ab");
    assert_eq!(pieces.concat(), g.text);
    // The prompt and one generated token were fed; nothing after the cancel.
    assert_eq!(toy.forwards.get(), 2);
}

#[test]
fn validate_rejects_out_of_range_settings() {
    let d = GenerationConfig::default();
    assert!(d.validate().is_ok());
    assert_eq!(
        (d.max_new_tokens, d.temperature, d.top_p, d.top_k, d.repetition_penalty, d.num_beams, d.max_context),
        (300, 1.0, 0.9, 0, 1.05, 1, 2000)
    );
    let bad = [
        GenerationConfig { temperature: -0.1, ..d.clone() },
        GenerationConfig { temperature: f64::NAN, ..d.clone() },
        GenerationConfig { temperature: f64::INFINITY, ..d.clone() },
        GenerationConfig { top_p: 0.0, ..d.clone() },
        GenerationConfig { top_p: 1.5, ..d.clone() },
        GenerationConfig { top_p: f64::NAN, ..d.clone() },
        GenerationConfig { num_beams: 0, ..d.clone() },
        GenerationConfig { num_beams: 11, ..d.clone() },
        GenerationConfig { max_new_tokens: 0, ..d.clone() },
        GenerationConfig { max_new_tokens: 2000, ..d.clone() },
        GenerationConfig { repetition_penalty: 0.0, ..d.clone() },
        GenerationConfig { repetition_penalty: -1.0, ..d.clone() },
        GenerationConfig { length_penalty: f32::NAN, ..d.clone() },
        GenerationConfig { stop_strings: vec![String::new()], ..d.clone() },
        GenerationConfig { stop_token_sequences: vec![vec![]], ..d.clone() },
    ];
    for cfg in bad {
        assert!(matches!(cfg.validate(), Err(Error::Generation(_))), "{cfg:?}");
    }
    for ok in [
        GenerationConfig { temperature: 0.0, ..d.clone() },
        GenerationConfig { top_p: 1.0, ..d.clone() },
        GenerationConfig { num_beams: 10, ..d.clone() },
    ] {
        assert!(ok.validate().is_ok());
    }
    // generate refuses an invalid config before touching the model.
    let toy = Toy::new(4, |_: &[u32]| vec![0.0; 4]);
    let r = generate(&toy, &toy.prompt(&[0]), &GenerationConfig { num_beams: 11, ..d }, &letters, &mut |_| {
        ControlFlow::Continue(())
    });
    assert!(matches!(r, Err(Error::Generation(_))));
    assert_eq!(toy.forwards.get(), 0);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let toy = Toy::new(4, |_: &[u32]| vec![0.0, f32::NAN, 0.0, 0.0]);
    let r = generate(&toy, &toy.prompt(&[0]), &base_cfg(), &letters, &mut |_| ControlFlow::Continue(()));
    // NaN logits come from the model's weights, a prompt of the wrong shape from our own code:
    // neither is the request's fault.
    assert!(matches!(&r, Err(e @ Error::Internal(m)) if m.contains("NaN") && !e.is_input_error()));
    let toy = Toy::new(4, |_: &[u32]| vec![0.0; 4]);
    let two_d = Tensor::zeros((3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
    let r = generate(&toy, &two_d, &base_cfg(), &letters, &mut |_| ControlFlow::Continue(()));
    assert!(matches!(r, Err(Error::Internal(_))));
}

#[test]
fn config_and_finish_reason_serde() {
    assert_eq!(serde_json::to_string(&FinishReason::Stop).unwrap(), "\"stop\"");
    assert_eq!(serde_json::to_string(&FinishReason::Cancelled).unwrap(), "\"cancelled\"");
    let cfg: GenerationConfig = serde_json::from_str(r#"{"num_beams": 3}"#).unwrap();
    assert_eq!(cfg, GenerationConfig { num_beams: 3, ..Default::default() });
}

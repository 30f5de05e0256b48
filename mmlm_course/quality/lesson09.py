"""Quality task of lesson 09 (audio-language models): `audio_lm`, the longer run.

The recipe of `mmlm_course.audio_lm` at benchmark scale, all on ShapeWorld's sounds:

1. two `CTCTranscriber` runs of the same length, one on clean clips and one on clips with
   lesson 02's augmentation (a delay of up to 0.1 s and noise at 5 to 40 dB), each scored
   by exact transcription on the clean test clips and on noisy ones (5 dB, delayed): the
   effect of the augmentation;
2. two `AudioLLaVA` models on the augmented transcriber (frozen), the same stages and steps:
   stage 1 (projector, and the relation head) and stage 2 (+ language model), each
   evaluated once on the test and compositional splits: caption truth (the sound verifier)
   and QA exact match, per question type. The lesson's model reads note tokens with lesson
   08's relation head (``tokens="notes", relation_head=True``: the figures without a
   prefix); the other reads stacked frames (``frames_``).

Aims (issue 17): caption truth >= 0.90 and QA exact match >= 0.95 on the test split.
"""

from __future__ import annotations

import time

RECIPE = dict(train=6000, evaluate=500, ctc_steps=800, ctc_rate=2e-3, stage1_steps=50, stage2_steps=8000,
              rate=3e-3, batch=32)
AIMS = {"caption_truth": 0.90, "qa_exact_match": 0.95}


def audio_lm_task() -> dict:
    """Train the transcribers and the audio LLaVA of `RECIPE`; return their figures."""
    import keras

    from mmlm_course import audio_lm, instructions, preprocessing, stages, training

    r, start, figures = RECIPE, time.perf_counter(), {}
    clean = audio_lm.generate(r["train"], "train", 0)
    augmented = audio_lm.generate(r["train"], "train", 0, **audio_lm.AUGMENT)
    test = audio_lm.generate(r["evaluate"], "test", 0)
    noisy = audio_lm.generate(r["evaluate"], "test", 0, snr_db=5, max_shift=1600)
    compositional = audio_lm.generate(r["evaluate"], "compositional", 0)
    for name, data in (("clean", clean), ("augmented", augmented)):
        model = audio_lm.pretrain_transcriber(data, r["ctc_steps"], learning_rate=r["ctc_rate"])
        for split, evaluation in (("test", test), ("noisy_test", noisy), ("compositional", compositional)):
            figures[f"ctc_{name}_trained_{split}"] = round(audio_lm.exact_transcriptions(model, evaluation), 3)
        print(f"  CTC trained on {name} clips: " + ", ".join(f"{k.split('trained_')[1]} {v:.1%}"
              for k, v in figures.items() if k.startswith(f"ctc_{name}")), flush=True)
    tokenizer = preprocessing.Tokenizer.for_shapeworld(extra_special=instructions.TASK_TOKENS)
    for prefix, options in (("frames_", dict(tokens="frames")), ("", dict(tokens="notes", relation_head=True))):
        keras.utils.set_random_seed(0)
        llava = audio_lm.AudioLLaVA(len(tokenizer), **options)
        llava.build()
        llava.load_transcriber(model)                                    # the augmented transcriber
        x, y = audio_lm.make_examples(augmented, tokenizer, llava.max_text_length)
        for stage, steps in ((1, r["stage1_steps"]), (2, r["stage2_steps"])):
            stages.compile_for_stage(llava, stage, r["rate"], total_steps=steps)
            training.train_steps(llava, x, y, steps, batch_size=r["batch"], seed=stage)
        for split, evaluation in (("test", test), ("compositional", compositional)):
            result = audio_lm.evaluate(llava, tokenizer, evaluation)
            figures[f"{prefix}{split}_caption_truth"] = round(result["caption_truth"], 3)
            figures[f"{prefix}{split}_qa"] = round(result["qa_exact_match"], 3)
            figures.update({f"{prefix}{split}_qa_{kind}": round(v, 3) for kind, v in result["qa_by_type"].items()})
            print(f"  audio LLaVA ({options['tokens']}), {split}: caption truth {result['caption_truth']:.1%}, QA "
                  f"{result['qa_exact_match']:.1%}", flush=True)
    figures["target_caption_truth"], figures["target_qa"] = AIMS["caption_truth"], AIMS["qa_exact_match"]
    figures["reached"] = (figures["test_caption_truth"] >= AIMS["caption_truth"]
                          and figures["test_qa"] >= AIMS["qa_exact_match"])
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


TASKS = {"audio_lm": audio_lm_task}

# `make demo`: train and evaluate a small SAM-DETR on the built-in synthetic dataset on 2 CPU
# cores (time and AP: docs/demo.md), print Detectron2's COCO table and `copypaste:` lines,
# draw the predicted boxes of a few validation images into $(DEMO_OUTPUT)/predictions/,
# what the last decoder layer looks at (reference boxes, salient points, attention maps per
# head) into $(DEMO_OUTPUT)/attention/, and the training losses into $(DEMO_OUTPUT)/losses.png;
# then export the model to ONNX ($(DEMO_OUTPUT)/export/model.onnx) and check it with onnxruntime
# on the same validation images (it prints the largest difference to PyTorch).
# Included by the Makefile (`include demo.mk`), which provides the `env` target.
PYTHON ?= .venv/bin/python
DEMO_CONFIG ?= configs/demo/sam_detr_R18_synthetic.yaml
DEMO_OUTPUT ?= output/demo
DEMO_ENV ?= PYTHONPATH=projects/SAMDETR$${PYTHONPATH:+:$$PYTHONPATH}
# Extra config overrides, e.g. a shorter schedule or float32 throughout:
#   make demo DEMO_OPTS='SOLVER.MAX_ITER 2000'
#   make demo DEMO_OPTS='SOLVER.AMP.ENABLED False'
DEMO_OPTS ?=
# Boxes drawn in the prediction images: focal-loss scores of a short training stay low.
DEMO_MIN_SCORE ?= 0.3
# Validation images drawn, enlarged from 160 px so that the labels stay readable.
DEMO_NUM_IMAGES ?= 8
DEMO_DRAW_SCALE ?= 3
# The demo's ONNX file skips onnxscript's graph optimiser (13 of the export's 52 s here);
# onnxruntime optimises the graph when it loads it (35 ms per image for this file, 32 for the
# optimised one). Set it to --optimize for a file you would deploy.
DEMO_EXPORT_OPTS ?= --no-optimize

.PHONY: demo
demo: env
	@start=$$(date +%s); \
	$(DEMO_ENV) $(PYTHON) train_net.py --config-file $(DEMO_CONFIG) \
		OUTPUT_DIR $(DEMO_OUTPUT) $(DEMO_OPTS) \
	&& $(DEMO_ENV) $(PYTHON) tools/run_tools.py \
		predict.py --config-file $(DEMO_OUTPUT)/config.yaml --dataset sam_detr_synthetic_val \
		--max-images $(DEMO_NUM_IMAGES) --scale $(DEMO_DRAW_SCALE) \
		--output $(DEMO_OUTPUT)/predictions --confidence-threshold $(DEMO_MIN_SCORE) \
		MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth \
		:: visualize_attention.py --config-file $(DEMO_OUTPUT)/config.yaml \
		--output $(DEMO_OUTPUT)/attention MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth \
		:: plot_losses.py $(DEMO_OUTPUT)/metrics.json --output $(DEMO_OUTPUT)/losses.png \
		:: export_model.py --config-file $(DEMO_OUTPUT)/config.yaml --format onnx \
		$(DEMO_EXPORT_OPTS) --output $(DEMO_OUTPUT)/export \
		MODEL.WEIGHTS $(DEMO_OUTPUT)/model_final.pth \
	&& echo "make demo: done in $$(( $$(date +%s) - start )) s; pictures in $(DEMO_OUTPUT)/predictions/, $(DEMO_OUTPUT)/attention/ and $(DEMO_OUTPUT)/losses.png; ONNX model in $(DEMO_OUTPUT)/export/"
